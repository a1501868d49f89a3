"""jobcompd: Slurm job-completion records from the jobcomp/filetxt log to Kafka."""

__version__ = "0.1.0"
