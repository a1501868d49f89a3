/* The compiled fast path: one ordinary filetxt record -> the jobcomp/kafka plugin's JSON bytes and
 * the record id, or "not mine".
 *
 * The Python reader (jobcompd/record.py, joining.py, encode.py) is the reference; this file is its
 * twin for the usual record only, and answers "not mine" for anything else, which the Python path
 * then reads as today. It takes a line only when record.py's one-reading shortcut would take it
 * and every value has its plain shape:
 *
 *   - one physical line, at most max_bytes long (line ending excluded), printable ASCII or valid
 *     UTF-8, no control character, no DEL;
 *   - "JobId=" at the start and nowhere else; " ReservationName=", " QOS=" and " Cluster=" each
 *     exactly once, and one " JobState=" that may start the fixed fields (others, not followed by
 *     a state and " Partition=", are a name's text): each free value -- name, work dir, account,
 *     wckey -- ends at the one place its key stands, and the record has one reading;
 *   - a 17.11 or later record (a 17.02 one may be the first line of a longer record);
 *   - strict fields (user, group, partition, node list, ...) in printable ASCII (a str regex's \S
 *     and \d also take non-ASCII spaces and digits), numbers of at most 10 digits within 32 bits;
 *   - times from 1900 to 9998 in an hour with one UTC offset that no DST fold repeats (the offset
 *     comes from a Python callback, once per local hour, cached here).
 *
 * Every read is bounded by the line's length: the parser moves a cursor forward over [p, end) and
 * checks the room left before each comparison. tests/test_fastline.py and fuzz/fuzz_record.py
 * compare its answers with the Python path's byte for byte.
 *
 * encode_lines() reads a batch without holding the interpreter (other threads run meanwhile): it
 * holds its own reference to every line, and the reading touches only their bytes, the encoder's
 * buffers and its cache of hour offsets (all under the encoder's lock). A line that needs Python
 * (an hour not cached yet, memory to grow a buffer) is read again once the interpreter is back.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- BLAKE2b (RFC 7693) */

static const uint64_t b2_iv[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t b2_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

typedef struct {
    uint64_t h[8];
    uint64_t t; /* bytes hashed so far (a record is far below 2^64) */
    uint8_t buf[128];
    size_t fill;
} blake2b;

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8); /* one load */
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
#endif
}

#define B2_G(a, b, c, d, x, y)              \
    do {                                    \
        v[a] = v[a] + v[b] + (x);           \
        v[d] = rotr64(v[d] ^ v[a], 32);     \
        v[c] = v[c] + v[d];                 \
        v[b] = rotr64(v[b] ^ v[c], 24);     \
        v[a] = v[a] + v[b] + (y);           \
        v[d] = rotr64(v[d] ^ v[a], 16);     \
        v[c] = v[c] + v[d];                 \
        v[b] = rotr64(v[b] ^ v[c], 63);     \
    } while (0)

#define B2_ROUND(r)                                                           \
    do {                                                                      \
        B2_G(0, 4, 8, 12, m[b2_sigma[r][0]], m[b2_sigma[r][1]]);              \
        B2_G(1, 5, 9, 13, m[b2_sigma[r][2]], m[b2_sigma[r][3]]);              \
        B2_G(2, 6, 10, 14, m[b2_sigma[r][4]], m[b2_sigma[r][5]]);             \
        B2_G(3, 7, 11, 15, m[b2_sigma[r][6]], m[b2_sigma[r][7]]);             \
        B2_G(0, 5, 10, 15, m[b2_sigma[r][8]], m[b2_sigma[r][9]]);             \
        B2_G(1, 6, 11, 12, m[b2_sigma[r][10]], m[b2_sigma[r][11]]);           \
        B2_G(2, 7, 8, 13, m[b2_sigma[r][12]], m[b2_sigma[r][13]]);            \
        B2_G(3, 4, 9, 14, m[b2_sigma[r][14]], m[b2_sigma[r][15]]);            \
    } while (0)

static void b2_compress(blake2b *s, const uint8_t *block, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = s->h[i];
        v[i + 8] = b2_iv[i];
    }
    v[12] ^= s->t;
    if (last) v[14] = ~v[14];
    /* Every round written out: the message words each takes are then constants, and the words
     * stay in registers (a loop over the rounds indexes m[] through the table: half the speed). */
    B2_ROUND(0);
    B2_ROUND(1);
    B2_ROUND(2);
    B2_ROUND(3);
    B2_ROUND(4);
    B2_ROUND(5);
    B2_ROUND(6);
    B2_ROUND(7);
    B2_ROUND(8);
    B2_ROUND(9);
    B2_ROUND(10);
    B2_ROUND(11);
    for (int i = 0; i < 8; i++) s->h[i] ^= v[i] ^ v[i + 8];
}

/* The start state of a 16-byte digest with no key and a 16-byte personalisation. */
static void b2_init(blake2b *s, const uint8_t person[16]) {
    for (int i = 0; i < 8; i++) s->h[i] = b2_iv[i];
    s->h[0] ^= 0x01010000ULL | 16; /* fanout 1, depth 1, no key, digest length 16 */
    s->h[6] ^= load64(person);
    s->h[7] ^= load64(person + 8);
    s->t = 0;
    s->fill = 0;
}

static void b2_update(blake2b *s, const uint8_t *in, size_t n) {
    while (n > 0) {
        if (s->fill == 128) { /* a full block is compressed only once more input follows */
            s->t += 128;
            b2_compress(s, s->buf, 0);
            s->fill = 0;
        }
        size_t take = 128 - s->fill;
        if (take > n) take = n;
        memcpy(s->buf + s->fill, in, take);
        s->fill += take;
        in += take;
        n -= take;
    }
}

static void b2_final_hex(blake2b *s, char out[32]) {
    static const char hex[] = "0123456789abcdef";
    s->t += s->fill;
    memset(s->buf + s->fill, 0, 128 - s->fill);
    b2_compress(s, s->buf, 1);
    for (int i = 0; i < 16; i++) {
        uint8_t byte = (uint8_t)(s->h[i / 8] >> (8 * (i % 8)));
        out[2 * i] = hex[byte >> 4];
        out[2 * i + 1] = hex[byte & 15];
    }
}

/* ---------------------------------------------------------------- output buffer */

typedef struct {
    char *data;
    size_t len, cap;
} outbuf;

static int out_reserve(outbuf *o, size_t more) {
    if (o->len + more <= o->cap) return 0;
    size_t cap = o->cap ? o->cap : 1024;
    while (cap < o->len + more) cap *= 2;
    char *data = PyMem_RawRealloc(o->data, cap); /* (no interpreter needed) */
    if (data == NULL) return -1;
    o->data = data;
    o->cap = cap;
    return 0;
}

static inline void out_raw(outbuf *o, const char *s, size_t n) {
    memcpy(o->data + o->len, s, n);
    o->len += n;
}

#define OUT_LIT(o, lit) out_raw((o), (lit), sizeof(lit) - 1)
/* A key (with its comma and colon) and a text value as a JSON string. */
#define OUT_STR_FIELD(o, key, t) do { OUT_LIT(o, key); out_str((o), (t).s, (t).n); } while (0)

static void out_int(outbuf *o, int64_t v) {
    char tmp[24];
    int n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) tmp[n++] = '-';
    while (n) o->data[o->len++] = tmp[--n];
}

/* A JSON string as orjson writes it, then with every "/" escaped as json-c does. The fast path
 * takes no control character, so '"' and '\\' are the only other bytes to escape. */
static void out_str(outbuf *o, const char *s, Py_ssize_t n) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    char *d = o->data + o->len;
    *d++ = '"';
    Py_ssize_t i = 0;
    /* Eight bytes at a time: copied whole when none is to be escaped (a byte equal to c is a zero
     * byte of w ^ c, and (x - ones) & ~x & highs is nonzero exactly when x has a zero byte). */
    while (n - i >= 8) {
        uint64_t w, q, b, sl;
        memcpy(&w, s + i, 8);
        q = w ^ ('"' * ones);
        b = w ^ ('\\' * ones);
        sl = w ^ ('/' * ones);
        if (!((((q - ones) & ~q) | ((b - ones) & ~b) | ((sl - ones) & ~sl)) & highs)) {
            memcpy(d, &w, 8);
            d += 8;
            i += 8;
            continue;
        }
        for (Py_ssize_t end = i + 8; i < end; i++) {
            char c = s[i];
            if (c == '"' || c == '\\' || c == '/') *d++ = '\\';
            *d++ = c;
        }
    }
    for (; i < n; i++) {
        char c = s[i];
        if (c == '"' || c == '\\' || c == '/') *d++ = '\\';
        *d++ = c;
    }
    *d++ = '"';
    o->len = (size_t)(d - o->data);
}

/* ---------------------------------------------------------------- times */

static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static inline int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

#define HOUR_SLOTS 4096

typedef struct {
    int64_t hour;   /* local hour number: local wall-clock seconds (read as UTC) // 3600 */
    int32_t offset; /* seconds east of UTC */
    int8_t known;   /* 0: empty slot, 1: offset holds, 2: not one clean offset (not mine) */
} hour_slot;

/* ---------------------------------------------------------------- the encoder object */

typedef struct {
    PyObject_HEAD
    PyObject *offset_of_hour; /* callable: local hour number -> offset seconds, or None */
    char *cluster;            /* fallback cluster for record ids (UTF-8), may be empty */
    Py_ssize_t cluster_len;
    Py_ssize_t max_bytes;
    uint8_t person[16];
    outbuf batch; /* the payloads of one encode_lines() call, end to end */
    outbuf one;   /* one payload, read with the interpreter held */
    PyThread_type_lock lock; /* one call at a time: the buffers and the hour cache are shared */
    int nogil;               /* the interpreter is not held: nothing may call into Python */
    hour_slot hours[HOUR_SLOTS];
} Encoder;

/* What a reading returns when it needs the interpreter, which it does not hold: read it again. */
#define NEED_GIL (-2)

/* 1: offset set; 0: not mine; -1: error (an exception is set). */
static int offset_for(Encoder *self, int64_t hour, int32_t *offset) {
    hour_slot *slot = &self->hours[(uint64_t)hour & (HOUR_SLOTS - 1)];
    if (slot->known && slot->hour == hour) {
        *offset = slot->offset;
        return slot->known == 1;
    }
    if (self->nogil) return NEED_GIL;
    PyObject *answer = PyObject_CallFunction(self->offset_of_hour, "L", (long long)hour);
    if (answer == NULL) return -1;
    int known = 2;
    if (answer != Py_None) {
        long value = PyLong_AsLong(answer);
        if (value == -1 && PyErr_Occurred()) {
            Py_DECREF(answer);
            return -1;
        }
        if (value > -86400 && value < 86400) {
            known = 1;
            slot->offset = (int32_t)value;
        }
    }
    Py_DECREF(answer);
    slot->hour = hour;
    slot->known = (int8_t)known;
    *offset = slot->offset;
    return known == 1;
}

/* A parsed time: absent (a word such as Unknown) or epoch seconds and the UTC text. */
typedef struct {
    int present;
    int64_t epoch;
    char utc[19];
} when;

static inline int is_digit(char c) { return c >= '0' && c <= '9'; }

static int days_in_month(int64_t y, int m) {
    static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
    return dim[m - 1];
}

/* ---------------------------------------------------------------- the line parser */

typedef struct {
    const char *p, *end;
} cursor;

static inline int take_lit(cursor *c, const char *lit, size_t n) {
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0) return 0;
    c->p += n;
    return 1;
}

#define TAKE(c, lit) take_lit((c), (lit), sizeof(lit) - 1)

/* An unsigned number of 1..10 ASCII digits within 32 bits. */
static int take_u32(cursor *c, int64_t *value) {
    const char *start = c->p;
    int64_t v = 0;
    while (c->p < c->end && is_digit(*c->p)) {
        if (c->p - start == 10) return 0;
        v = v * 10 + (*c->p - '0');
        c->p++;
    }
    if (c->p == start || v > 0xFFFFFFFFLL) return 0;
    *value = v;
    return 1;
}

/* A \S* value: printable ASCII other than space, up to the next space (or the end). */
static int take_token(cursor *c, const char **s, Py_ssize_t *n) {
    const char *start = c->p;
    while (c->p < c->end && *c->p != ' ') {
        unsigned char b = (unsigned char)*c->p;
        if (b < 0x21 || b > 0x7E) return 0;
        c->p++;
    }
    *s = start;
    *n = c->p - start;
    return 1;
}

/* "name(digits)" up to the next space: the name is what comes before the last "(digits)". */
static int take_owner(cursor *c, const char **name, Py_ssize_t *name_len, int64_t *id) {
    const char *s;
    Py_ssize_t n;
    if (!take_token(c, &s, &n) || n < 3 || s[n - 1] != ')') return 0;
    Py_ssize_t i = n - 2;
    while (i >= 0 && is_digit(s[i])) i--;
    if (i < 0 || s[i] != '(' || i == n - 2) return 0;
    cursor num = {s + i + 1, s + n - 1};
    if (!take_u32(&num, id) || num.p != num.end) return 0;
    *name = s;
    *name_len = i;
    return 1;
}

/* A time (YYYY-MM-DDTHH:MM:SS, years 1900..9998, an hour with one clean offset) or one of the
 * words Slurm writes for no time. 1: read; 0: not mine; -1: error. */
static int take_time(Encoder *self, cursor *c, when *w) {
    w->present = 0;
    if (TAKE(c, "Unknown") || TAKE(c, "unknown") || TAKE(c, "None")) return 1;
    const char *s = c->p;
    if (c->end - s < 19) return 0;
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    for (int i = 0; i < 19; i++) {
        if (shape[i] == 'd' ? !is_digit(s[i]) : s[i] != shape[i]) return 0;
    }
    int64_t y = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    int mo = (s[5] - '0') * 10 + (s[6] - '0');
    int d = (s[8] - '0') * 10 + (s[9] - '0');
    int h = (s[11] - '0') * 10 + (s[12] - '0');
    int mi = (s[14] - '0') * 10 + (s[15] - '0');
    int se = (s[17] - '0') * 10 + (s[18] - '0');
    if (y < 1900 || y > 9998 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 ||
        mi > 59 || se > 59)
        return 0;
    int64_t local = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
    int32_t offset;
    int ok = offset_for(self, floor_div(local, 3600), &offset);
    if (ok <= 0) return ok;
    int64_t epoch = local - offset;
    int64_t days = floor_div(epoch, 86400);
    int64_t rest = epoch - days * 86400;
    int64_t uy;
    int um, ud;
    civil_from_days(days, &uy, &um, &ud);
    if (uy < 1000 || uy > 9999) return 0;
    char *o = w->utc;
    o[0] = (char)('0' + uy / 1000);
    o[1] = (char)('0' + uy / 100 % 10);
    o[2] = (char)('0' + uy / 10 % 10);
    o[3] = (char)('0' + uy % 10);
    o[4] = '-';
    o[5] = (char)('0' + um / 10);
    o[6] = (char)('0' + um % 10);
    o[7] = '-';
    o[8] = (char)('0' + ud / 10);
    o[9] = (char)('0' + ud % 10);
    o[10] = 'T';
    int uh = (int)(rest / 3600), umi = (int)(rest / 60 % 60), us = (int)(rest % 60);
    o[11] = (char)('0' + uh / 10);
    o[12] = (char)('0' + uh % 10);
    o[13] = ':';
    o[14] = (char)('0' + umi / 10);
    o[15] = (char)('0' + umi % 10);
    o[16] = ':';
    o[17] = (char)('0' + us / 10);
    o[18] = (char)('0' + us % 10);
    w->present = 1;
    w->epoch = epoch;
    c->p += 19;
    return 1;
}

/* An exit status: "exit:signal" kept as written, or a raw wait status decoded into it. */
typedef struct {
    const char *s;
    Py_ssize_t n;
    int raw;
    int64_t status;
} exit_code;

static int take_signed10(cursor *c, int64_t *v) {
    int neg = c->p < c->end && *c->p == '-';
    if (neg) c->p++;
    const char *start = c->p;
    int64_t x = 0;
    while (c->p < c->end && is_digit(*c->p)) {
        if (c->p - start == 10) return 0;
        x = x * 10 + (*c->p - '0');
        c->p++;
    }
    if (c->p == start) return 0;
    *v = neg ? -x : x;
    return 1;
}

static int take_exit(cursor *c, exit_code *e) {
    e->s = c->p;
    int64_t first, second;
    if (!take_signed10(c, &first)) return 0;
    e->raw = 1;
    e->status = first;
    if (c->p < c->end && *c->p == ':') {
        c->p++;
        if (!take_signed10(c, &second)) return 0;
        e->raw = 0;
    }
    e->n = c->p - e->s;
    return 1;
}

static void out_exit(outbuf *o, const exit_code *e) {
    if (!e->raw) {
        out_str(o, e->s, e->n);
        return;
    }
    int64_t sig = e->status & 0x7F;
    o->data[o->len++] = '"';
    if (sig && sig != 0x7F) {
        OUT_LIT(o, "0:");
        out_int(o, sig);
    } else {
        out_int(o, (e->status >> 8) & 0xFF);
        OUT_LIT(o, ":0");
    }
    o->data[o->len++] = '"';
}

typedef struct {
    const char *s;
    Py_ssize_t n;
} text;

static inline int is_lit(text t, const char *lit) {
    size_t n = strlen(lit);
    return (size_t)t.n == n && memcmp(t.s, lit, n) == 0;
}

static inline int not_set(text t) { return t.n == 0 || is_lit(t, "(null)"); }

/* Whether [s, s+n) is printable ASCII or well-formed UTF-8 with no control character. */
static int clean_utf8(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        /* Eight bytes at a time while they are printable ASCII (none >= 0x80, < 0x20 or 0x7F). */
        while (n - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
            uint64_t below = (w - 0x20 * ones) & ~w; /* a high bit set: some byte < 0x20 */
            uint64_t del = w ^ (0x7F * ones);
            uint64_t is_del = (del - ones) & ~del;   /* ... some byte is 0x7F */
            if ((w | below | is_del) & highs) break; /* (or >= 0x80): the bytes one by one */
            i += 8;
        }
        if (i == n) break;
        unsigned char b = s[i];
        if (b < 0x80) {
            if (b < 0x20 || b == 0x7F) return 0;
            i++;
            continue;
        }
        int more;
        unsigned char lo = 0x80, hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF) {
            more = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            more = 2;
            if (b == 0xE0) lo = 0xA0;
            if (b == 0xED) hi = 0x9F; /* no surrogates */
        } else if (b >= 0xF0 && b <= 0xF4) {
            more = 3;
            if (b == 0xF0) lo = 0x90;
            if (b == 0xF4) hi = 0x8F;
        } else {
            return 0;
        }
        if (n - i <= more) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (int k = 2; k <= more; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
        }
        /* C1 controls (U+0080..U+009F) are escaped by no one, but keep to the plain case. */
        if (b == 0xC2 && s[i + 1] < 0xA0) return 0;
        i += more + 1;
    }
    return 1;
}

typedef struct {
    int64_t jobid, uid, gid, ncnt, cpus, limit;
    int has_limit;
    text user, group, name, state, partition, nodes, work_dir, resv, tres, account, qos, wckey,
        cluster;
    when start, end, submit, eligible;
    int has_array, has_het;
    int64_t array_job, array_task, het_id, het_offset;
    exit_code derived, exit;
    int legacy; /* a 17.02 record: nothing after the work dir is sent */
} fields;

/* Where the keys that end the free values stand in a line, found in one pass over its '=' signs
 * (each key ends with one; memchr finds them many bytes at a time). */
typedef struct {
    /* The one " JobState=" that may start the run of fixed fields, or NULL when none or several
     * may. Any other " JobState=" is a name's (or a directory's) own text: it is not followed by
     * [A-Z_]+ " Partition=", so the Python reader does not take it for a run either. */
    const char *run;
    /* The first " ReservationName=", " QOS=", " Cluster=", and how many times each stands. */
    const char *resv, *qos, *cluster;
    int resv_n, qos_n, cluster_n;
} key_places;

/* Whether the n bytes of `key` (its '=' excluded) stand right before `eq`, at or after `from`. */
static inline int key_before(const char *eq, const char *from, const char *key, size_t n) {
    return (size_t)(eq - from) >= n && memcmp(eq - n, key, n) == 0;
}

/* Fills k; 0 when "JobId=<digits> UserId=" stands after the line's first byte: a record start
 * inside the line (a write cut short, then the next record) is the Python reader's to judge
 * (ArrayJobId= and HetJobId= are not starts). */
static int find_keys(const char *line, const char *end, key_places *k) {
    memset(k, 0, sizeof *k);
    int runs = 0;
    for (const char *eq = line; (eq = memchr(eq, '=', (size_t)(end - eq))) != NULL; eq++) {
        if (eq == line) continue;
        cursor c = {eq + 1, end};
        switch (eq[-1]) {
        case 'd':
            if (key_before(eq, line + 1, "JobId", 5)) {
                const char *digits = c.p;
                /* The Python reader's \d also takes non-ASCII digits: any non-ASCII byte counts as one. */
                while (c.p < c.end && (is_digit(*c.p) || (unsigned char)*c.p >= 0x80)) c.p++;
                if (c.p > digits && TAKE(&c, " UserId=")) return 0;
            }
            break;
        case 'e':
            if (key_before(eq, line, " JobState", 9)) {
                const char *state = c.p;
                while (c.p < c.end && ((*c.p >= 'A' && *c.p <= 'Z') || *c.p == '_')) c.p++;
                if (c.p > state && TAKE(&c, " Partition=")) {
                    runs++;
                    k->run = eq - 9;
                }
            } else if (key_before(eq, line, " ReservationName", 16)) {
                if (!k->resv_n++) k->resv = eq - 16;
            }
            break;
        case 'S':
            if (key_before(eq, line, " QOS", 4) && !k->qos_n++) k->qos = eq - 4;
            break;
        case 'r':
            if (key_before(eq, line, " Cluster", 8) && !k->cluster_n++) k->cluster = eq - 8;
            break;
        }
    }
    if (runs != 1) k->run = NULL;
    return 1;
}

/* Whether [s, s+n) is a select-plugin word, [A-Z][A-Za-z_]*=\S* (ASCII only: the Python reader's
 * \S is Unicode's, so a non-ASCII byte makes the line not mine, *unsure set). */
static int select_word(const char *s, Py_ssize_t n, int *unsure) {
    if (n < 2 || !(s[0] >= 'A' && s[0] <= 'Z')) return 0;
    Py_ssize_t i = 1;
    while (i < n && ((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') || s[i] == '_')) i++;
    if (i == n || s[i] != '=') return 0;
    for (i++; i < n; i++) {
        if ((unsigned char)s[i] >= 0x80) *unsure = 1;
    }
    return 1;
}

/* "WorkDir=%s %s" of 17.02: the directory, then select-plugin words (peeled off from the end). */
static int legacy_work_dir(cursor *c, fields *f) {
    const char *rest = c->p;
    Py_ssize_t cut = c->end - rest;
    if (cut > 0 && rest[cut - 1] == ' ') cut--;
    int unsure = 0;
    for (;;) {
        Py_ssize_t space = cut - 1;
        while (space >= 0 && rest[space] != ' ') space--;
        if (space < 0 || !select_word(rest + space + 1, cut - space - 1, &unsure)) break;
        if (unsure) return 0;
        cut = space;
    }
    f->work_dir = (text){rest, cut};
    return 1;
}

/* Whether a line surely starts a record as the Python reader sees one (JobId=N UserId=..(N) GroupId=). */
static int record_start(const char *line, Py_ssize_t line_len) {
    if (line == NULL) return 0;
    cursor c = {line, line + line_len};
    int64_t v;
    const char *s;
    Py_ssize_t n;
    return TAKE(&c, "JobId=") && take_u32(&c, &v) && TAKE(&c, " UserId=") && take_owner(&c, &s, &n, &v) &&
           TAKE(&c, " GroupId=");
}

/* 1: the record was read into f; 0: not mine; -1: error (exception set). */
static int read_record(Encoder *self, const char *line, Py_ssize_t n, fields *f) {
    const char *end = line + n;
    memset(f, 0, sizeof *f);
    if (n > self->max_bytes) return 0;
    if (!clean_utf8((const unsigned char *)line, n)) return 0;
    if (n < 6 || memcmp(line, "JobId=", 6) != 0) return 0;
    key_places k;
    if (!find_keys(line, end, &k) || !k.run) return 0;
    const char *jobstate = k.run;
    /* Each once, or NULL. */
    const char *resv = k.resv_n == 1 ? k.resv : NULL;
    const char *qos = k.qos_n == 1 ? k.qos : NULL;
    const char *cluster = k.cluster_n == 1 ? k.cluster : NULL;
    /* 17.02 and older: none of the 17.11 keys anywhere. */
    f->legacy = !k.resv_n && !k.qos_n && !k.cluster_n;
    if (!f->legacy && (!resv || !qos || !cluster || !(jobstate < resv && resv < qos && qos < cluster)))
        return 0;

    cursor c = {line + 6, end};
    int ok;
    if (!take_u32(&c, &f->jobid) || !TAKE(&c, " UserId=")) return 0;
    if (!take_owner(&c, &f->user.s, &f->user.n, &f->uid) || !TAKE(&c, " GroupId=")) return 0;
    if (!take_owner(&c, &f->group.s, &f->group.n, &f->gid) || !TAKE(&c, " Name=")) return 0;
    if (c.p > jobstate) return 0;
    f->name = (text){c.p, jobstate - c.p};

    c.p = jobstate + 10; /* " JobState=" */
    const char *s = c.p;
    while (c.p < c.end && ((*c.p >= 'A' && *c.p <= 'Z') || *c.p == '_')) c.p++;
    if (c.p == s) return 0;
    f->state = (text){s, c.p - s};
    if (!TAKE(&c, " Partition=") || !take_token(&c, &f->partition.s, &f->partition.n)) return 0;
    if (!TAKE(&c, " TimeLimit=")) return 0;
    s = c.p;
    if (c.p < c.end && is_digit(*c.p)) {
        if (!take_u32(&c, &f->limit)) return 0;
        f->has_limit = 1;
    } else {
        while (c.p < c.end && ((*c.p >= 'A' && *c.p <= 'Z') || (*c.p >= 'a' && *c.p <= 'z') || *c.p == '_'))
            c.p++;
        if (c.p == s) return 0;
        f->has_limit = 0;
    }
    if (!TAKE(&c, " StartTime=")) return 0;
    if ((ok = take_time(self, &c, &f->start)) <= 0) return ok;
    if (!TAKE(&c, " EndTime=")) return 0;
    if ((ok = take_time(self, &c, &f->end)) <= 0) return ok;
    if (!TAKE(&c, " NodeList=") || !take_token(&c, &f->nodes.s, &f->nodes.n)) return 0;
    if (!TAKE(&c, " NodeCnt=") || !take_u32(&c, &f->ncnt)) return 0;
    if (!(TAKE(&c, " ProcCnt=") || TAKE(&c, " Procs=")) || !take_u32(&c, &f->cpus)) return 0;
    if (!TAKE(&c, " WorkDir=")) return 0;
    if (f->legacy) return legacy_work_dir(&c, f);
    if (c.p > resv) return 0;
    f->work_dir = (text){c.p, resv - c.p};

    c.p = resv + 17; /* " ReservationName=" */
    if (!take_token(&c, &f->resv.s, &f->resv.n)) return 0;
    if (!(TAKE(&c, " Tres=") || TAKE(&c, " Gres="))) return 0;
    if (!take_token(&c, &f->tres.s, &f->tres.n) || !TAKE(&c, " Account=") || c.p > qos) return 0;
    f->account = (text){c.p, qos - c.p};

    c.p = qos + 5; /* " QOS=" */
    if (!take_token(&c, &f->qos.s, &f->qos.n) || !TAKE(&c, " WcKey=") || c.p > cluster) return 0;
    f->wckey = (text){c.p, cluster - c.p};

    c.p = cluster + 9; /* " Cluster=" */
    if (!take_token(&c, &f->cluster.s, &f->cluster.n) || !TAKE(&c, " SubmitTime=")) return 0;
    if ((ok = take_time(self, &c, &f->submit)) <= 0) return ok;
    if (!TAKE(&c, " EligibleTime=")) return 0;
    if ((ok = take_time(self, &c, &f->eligible)) <= 0) return ok;
    f->has_array = TAKE(&c, " ArrayJobId=");
    if (f->has_array) {
        if (!take_u32(&c, &f->array_job) || !TAKE(&c, " ArrayTaskId=") || !take_u32(&c, &f->array_task))
            return 0;
    }
    f->has_het = TAKE(&c, " PackJobId=") || TAKE(&c, " HetJobId=");
    if (f->has_het) {
        if (!take_u32(&c, &f->het_id)) return 0;
        if (!(TAKE(&c, " PackJobOffset=") || TAKE(&c, " HetJobOffset="))) return 0;
        if (!take_u32(&c, &f->het_offset)) return 0;
    } else {
        f->het_id = f->het_offset = 0;
    }
    if (!TAKE(&c, " DerivedExitCode=") || !take_exit(&c, &f->derived)) return 0;
    if (!TAKE(&c, " ExitCode=") || !take_exit(&c, &f->exit)) return 0;
    return c.p == c.end || *c.p == ' '; /* what follows is select-plugin text, not sent */
}

/* A positive float's "%.17g" text where it is plain decimal (what the plugin's hours always are,
 * 1/3600 to 2.6e15), without printf: the float is m * 2^e exactly, so its decimal expansion is the
 * integer m * 5^-e with -e digits after the point, rounded to 17 significant digits half to even as
 * glibc rounds an exact value, then trailing zeros dropped as %g drops them. 0 where that does not
 * hold (the caller then asks snprintf). */
static int format_17g(float value, char *text, size_t size) {
#ifndef __SIZEOF_INT128__
    (void)value, (void)text, (void)size;
    return 0; /* no 128-bit integers here (a 32-bit target): snprintf does it */
#else
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    int biased = (int)((bits >> 23) & 0xFF);
    if (bits >> 31 || biased == 0 || biased == 0xFF) return 0; /* negative, subnormal, inf, nan */
    unsigned __int128 n = (bits & 0x7FFFFF) | 0x800000;
    int e = biased - 150;
    int point = 0; /* n * 10^-point is the value */
    if (e >= 0) {
        if (e > 40) return 0;
        n <<= e;
    } else {
        if (e < -40) return 0; /* m * 5^40 < 2^117 */
        uint64_t five = 1;
        for (int i = 0; i < -e && i < 27; i++) five *= 5; /* 5^27 < 2^64 */
        n *= five;
        for (int i = 27; i < -e; i++) n *= 5;
        point = -e;
    }
    /* Its digits, the last first: two 64-bit halves (n < 2^117 < 10^36), each divided by 10 as
     * the compiler does it for 64 bits, not by the library's 128-bit division. */
    char digits[48];
    int count = 0;
    uint64_t low = (uint64_t)n, high = 0;
    if (n >> 64) {
        high = (uint64_t)(n / 1000000000000000000ULL);
        low = (uint64_t)(n % 1000000000000000000ULL);
        for (int i = 0; i < 18; i++, low /= 10) digits[count++] = (char)('0' + (int)(low % 10));
        for (; high; high /= 10) digits[count++] = (char)('0' + (int)(high % 10));
    } else {
        for (; low; low /= 10) digits[count++] = (char)('0' + (int)(low % 10));
    }
    /* digits[] holds n's digits from the last; keep the first 17, rounded half to even. */
    if (count > 17) {
        int cut = count - 17;
        int half = digits[cut - 1] == '5', above_half = digits[cut - 1] > '5';
        for (int i = 0; half && i < cut - 1; i++) {
            if (digits[i] != '0') half = 0, above_half = 1;
        }
        int odd = (digits[cut] - '0') & 1;
        memmove(digits, digits + cut, 17);
        count = 17;
        point -= cut;
        if (above_half || (half && odd)) {
            int i = 0;
            while (i < count && digits[i] == '9') digits[i++] = '0';
            if (i == count) {
                digits[count++] = '1'; /* 99..9 rounded up: one more digit, one fewer kept */
                memmove(digits, digits + 1, 17);
                count = 17;
                point -= 1;
            } else {
                digits[i]++;
            }
        }
    }
    int lead = count - point; /* digits before the point */
    if (lead - 1 < -4 || lead - 1 >= 17) return 0; /* %g would write an exponent */
    int zeros = 0; /* trailing zeros after the point, dropped by %g */
    while (zeros < point && zeros < count && digits[zeros] == '0') zeros++;
    size_t len = 0;
    char out[64];
    if (lead <= 0) {
        out[len++] = '0';
        out[len++] = '.';
        for (int i = 0; i < -lead; i++) out[len++] = '0';
        for (int i = count - 1; i >= zeros; i--) out[len++] = digits[i];
    } else {
        for (int i = count - 1; i >= count - lead && i >= 0; i--) out[len++] = digits[i];
        for (int i = count; i < lead; i++) out[len++] = '0'; /* (point < 0: an integer) */
        if (point > zeros) {
            out[len++] = '.';
            for (int i = point - 1; i >= zeros; i--) out[len++] = digits[i];
        }
    }
    if (len + 1 > size) return 0;
    memcpy(text, out, len);
    text[len] = '\0';
    return (int)len;
#endif
}

/* C float arithmetic of the plugin: (elapsed * total_cpus) / 3600.0f. 0: out of reach. */
static int out_cpu_hours(outbuf *o, int64_t elapsed, int64_t cpus) {
    if (!elapsed || !cpus) {
        OUT_LIT(o, "0.0");
        return 1;
    }
    int64_t product;
    if (__builtin_mul_overflow(elapsed, cpus, &product)) return 0;
    float f = (float)(double)product;
    float hours = (float)((double)f / 3600.0);
    char text[40]; /* json-c's "%.17g" (what encode.py writes too) */
    int n = format_17g(hours, text, sizeof text);
    if (n <= 0) n = snprintf(text, sizeof text, "%.17g", (double)hours);
    if (n <= 0 || (size_t)n >= sizeof text) return 0;
    int plain = strpbrk(text, ".en") == NULL;
    out_raw(o, text, (size_t)n);
    if (plain) OUT_LIT(o, ".0");
    return 1;
}

static void out_time(outbuf *o, const char *key, size_t key_len, const when *w) {
    out_raw(o, key, key_len);
    o->data[o->len++] = '"';
    out_raw(o, w->utc, 19);
    o->data[o->len++] = '"';
}

#define OUT_TIME(o, lit, w) out_time((o), (lit), sizeof(lit) - 1, (w))

static void out_str_or_null(outbuf *o, text t) {
    if (is_lit(t, "(null)"))
        OUT_LIT(o, "null");
    else
        out_str(o, t.s, t.n);
}

/* The plugin's JSON for f, appended to o (keys in encode.Encoder.to_dict's order).
 * 1: written; 0: not mine (o may hold part of it); -1: no memory (no exception is set). */
static int write_json(outbuf *o, const fields *f, Py_ssize_t line_len) {
    /* Every string is at most twice its length in the line; keys and numbers need < 2 KiB. */
    if (out_reserve(o, 2048 + 2 * (size_t)line_len) < 0) return -1;
    OUT_LIT(o, "{\"jobid\":");
    out_int(o, f->jobid);
    OUT_LIT(o, ",\"username\":");
    out_str_or_null(o, f->user);
    OUT_LIT(o, ",\"user_id\":");
    out_int(o, f->uid);
    OUT_LIT(o, ",\"groupname\":");
    out_str_or_null(o, f->group);
    OUT_LIT(o, ",\"group_id\":");
    out_int(o, f->gid);
    int64_t elapsed = 0;
    if (f->start.present) OUT_TIME(o, ",\"@start\":", &f->start);
    if (f->end.present) {
        if (f->start.present && f->end.epoch > f->start.epoch) elapsed = f->end.epoch - f->start.epoch;
        OUT_TIME(o, ",\"@end\":", &f->end);
    }
    OUT_LIT(o, ",\"elapsed\":");
    out_int(o, elapsed);
    OUT_LIT(o, ",\"partition\":");
    out_str_or_null(o, f->partition);
    OUT_LIT(o, ",\"nodes\":");
    out_str_or_null(o, f->nodes);
    OUT_LIT(o, ",\"total_cpus\":");
    out_int(o, f->cpus);
    OUT_LIT(o, ",\"total_nodes\":");
    out_int(o, f->ncnt);
    if (!f->legacy) {
        OUT_LIT(o, ",\"derived_ec\":");
        out_exit(o, &f->derived);
        OUT_LIT(o, ",\"exit_code\":");
        out_exit(o, &f->exit);
    }
    OUT_STR_FIELD(o, ",\"state\":", f->state);
    OUT_LIT(o, ",\"cpu_hours\":");
    int ok = out_cpu_hours(o, elapsed, f->cpus);
    if (ok <= 0) return ok;
    if (f->has_array) {
        OUT_LIT(o, ",\"array_job_id\":");
        out_int(o, f->array_job);
        OUT_LIT(o, ",\"array_task_id\":");
        out_int(o, f->array_task);
    }
    OUT_LIT(o, ",\"pack_job_id\":");
    out_int(o, f->het_id);
    OUT_LIT(o, ",\"pack_job_offset\":");
    out_int(o, f->het_offset);
    OUT_LIT(o, ",\"het_job_id\":");
    out_int(o, f->het_id);
    OUT_LIT(o, ",\"het_job_offset\":");
    out_int(o, f->het_offset);
    if (f->submit.present) OUT_TIME(o, ",\"@submit\":", &f->submit);
    if (f->eligible.present) {
        OUT_TIME(o, ",\"@eligible\":", &f->eligible);
        if (f->start.present && f->start.epoch >= f->eligible.epoch) {
            OUT_LIT(o, ",\"@queue_wait\":");
            out_int(o, f->start.epoch - f->eligible.epoch);
        }
    }
    if (!is_lit(f->work_dir, "unknown") && !is_lit(f->work_dir, "(null)")) {
        OUT_STR_FIELD(o, ",\"work_dir\":", f->work_dir);
    }
    if (!not_set(f->cluster) && !is_lit(f->cluster, "unknown")) {
        OUT_STR_FIELD(o, ",\"cluster\":", f->cluster);
    }
    if (!not_set(f->qos)) {
        OUT_STR_FIELD(o, ",\"qos\":", f->qos);
    }
    if (f->has_limit) {
        OUT_LIT(o, ",\"time_limit\":");
        out_int(o, f->limit * 60);
    }
    OUT_STR_FIELD(o, ",\"job_name\":", f->name);
    if (!not_set(f->resv)) {
        OUT_STR_FIELD(o, ",\"reservation_name\":", f->resv);
    }
    if (!not_set(f->wckey)) {
        OUT_STR_FIELD(o, ",\"wc_key\":", f->wckey);
    }
    if (!not_set(f->tres)) {
        OUT_STR_FIELD(o, ",\"tres_req\":", f->tres);
    }
    if (!not_set(f->account)) {
        OUT_STR_FIELD(o, ",\"account\":", f->account);
    }
    o->data[o->len++] = '}';
    return 1;
}

static void record_id_hex(Encoder *self, const fields *f, const char *line, Py_ssize_t n, char hex[32]) {
    blake2b s;
    b2_init(&s, self->person);
    if (!not_set(f->cluster) && !is_lit(f->cluster, "unknown"))
        b2_update(&s, (const uint8_t *)f->cluster.s, (size_t)f->cluster.n);
    else
        b2_update(&s, (const uint8_t *)self->cluster, (size_t)self->cluster_len);
    b2_update(&s, (const uint8_t *)"", 1);
    b2_update(&s, (const uint8_t *)line, (size_t)n);
    b2_final_hex(&s, hex);
}

/* One line's bytes (its line ending included or not): 1 with *jobid and hex set and the payload
 * appended to o; 0: not mine; -1: error (an exception is set); NEED_GIL: it needs the interpreter
 * (only while self->nogil). A 17.02 record stands alone only when no line follows it or the next
 * one starts a record (else the Python reader may join the lines into one newer record): `alone`
 * says so. */
static int encode_bytes(Encoder *self, outbuf *o, const char *line, Py_ssize_t n, int alone,
                        int64_t *jobid, char hex[32]) {
    if (n > 0 && line[n - 1] == '\n') {
        n--;
        if (n > 0 && line[n - 1] == '\r') n--;
    }
    fields f;
    int ok = read_record(self, line, n, &f);
    if (ok <= 0 || (f.legacy && !alone)) return ok < 0 ? ok : 0;
    size_t start = o->len;
    ok = write_json(o, &f, n);
    if (ok <= 0) {
        o->len = start;
        if (ok == 0) return 0;
        if (self->nogil) return NEED_GIL;
        PyErr_NoMemory();
        return -1;
    }
    record_id_hex(self, &f, line, n, hex);
    *jobid = f.jobid;
    return 1;
}

/* The (record id, job id, payload) objects of a line read: new references, or -1 (exception set). */
static int answer(const char hex[32], int64_t jobid_value, const char *payload_s, size_t payload_n,
                  PyObject **rid, PyObject **jobid, PyObject **payload) {
    *payload = PyBytes_FromStringAndSize(payload_s, (Py_ssize_t)payload_n);
    *rid = PyUnicode_FromStringAndSize(hex, 32);
    *jobid = PyLong_FromLongLong(jobid_value);
    if (*payload == NULL || *rid == NULL || *jobid == NULL) {
        Py_XDECREF(*payload);
        Py_XDECREF(*rid);
        Py_XDECREF(*jobid);
        return -1;
    }
    return 1;
}

/* One line, the interpreter held: 1 with *rid, *jobid, *payload set (new references); 0: not
 * mine; -1: error. */
static int encode_one(Encoder *self, const char *line, Py_ssize_t n, int alone, PyObject **rid,
                      PyObject **jobid, PyObject **payload) {
    char hex[32];
    int64_t id;
    self->one.len = 0;
    int ok = encode_bytes(self, &self->one, line, n, alone, &id, hex);
    if (ok <= 0) return ok;
    return answer(hex, id, self->one.data, self->one.len, rid, jobid, payload);
}

/* Take the encoder's lock, letting other threads run while it is busy. */
static void lock_encoder(Encoder *self) {
    if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

static PyObject *Encoder_encode_line(Encoder *self, PyObject *line) {
    if (!PyBytes_Check(line)) {
        PyErr_SetString(PyExc_TypeError, "encode_line() takes bytes");
        return NULL;
    }
    PyObject *rid, *jobid, *payload;
    lock_encoder(self);
    int ok = encode_one(self, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line), 1, &rid, &jobid, &payload);
    PyThread_release_lock(self->lock);
    if (ok < 0) return NULL;
    if (ok == 0) Py_RETURN_NONE;
    return Py_BuildValue("(NNN)", rid, jobid, payload);
}

/* Lines read between two returns to the interpreter, by their bytes (at least one line): a
 * batch's payloads (~1.2 MB for 2,000 lines) are read in a chunk or two. Each return waits for
 * the interpreter lock while other threads hold it (the sender's calls into confluent-kafka):
 * with chunks of 128 KiB, sixteen waits a batch cost replay 8 % of its throughput. */
#define CHUNK_BYTES (1024 * 1024)

/* A line of a batch: its bytes, then what reading it gave. */
typedef struct {
    const char *s; /* NULL: not bytes (not mine: the Python path takes any buffer) */
    Py_ssize_t n;
    int alone;     /* no line follows, or the next one starts a record (see encode_bytes) */
    int status;    /* encode_bytes()'s answer */
    int64_t jobid;
    size_t start, len; /* the payload in self->batch */
    char hex[32];
} batch_line;

static PyObject *Encoder_encode_lines(Encoder *self, PyObject *lines) {
    /* A tuple of its own holds every line while the interpreter is let go. */
    PyObject *held = PySequence_Tuple(lines);
    if (held == NULL) return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(held);
    batch_line *at_line = PyMem_Calloc(count ? (size_t)count : 1, sizeof *at_line);
    PyObject *rids = PyList_New(0), *jobids = PyList_New(0), *payloads = PyList_New(0), *at = PyList_New(0);
    if (at_line == NULL || !rids || !jobids || !payloads || !at) {
        if (at_line == NULL) PyErr_NoMemory();
        PyMem_Free(at_line);
        Py_DECREF(held);
        Py_XDECREF(rids);
        Py_XDECREF(jobids);
        Py_XDECREF(payloads);
        Py_XDECREF(at);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(held, i);
        if (PyBytes_Check(item)) {
            at_line[i].s = PyBytes_AS_STRING(item);
            at_line[i].n = PyBytes_GET_SIZE(item);
        }
    }
    lock_encoder(self);
    int failed = 0;
    /* A chunk of lines at a time, so the payload buffer stays small (it lives as long as the
     * encoder): read without the interpreter, then made into objects with it. */
    for (Py_ssize_t first = 0, end; first < count && !failed; first = end) {
        Py_ssize_t bytes = 0;
        for (end = first; end < count && (end == first || bytes < CHUNK_BYTES); end++) bytes += at_line[end].n;
        self->batch.len = 0;
        self->nogil = 1;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = first; i < end; i++) {
            batch_line *l = &at_line[i];
            if (l->s == NULL) continue;
            l->alone = i + 1 == count || record_start(at_line[i + 1].s, at_line[i + 1].n);
            l->start = self->batch.len;
            l->status = encode_bytes(self, &self->batch, l->s, l->n, l->alone, &l->jobid, l->hex);
            l->len = self->batch.len - l->start;
        }
        Py_END_ALLOW_THREADS
        self->nogil = 0;
        for (Py_ssize_t i = first; i < end && !failed; i++) {
            batch_line *l = &at_line[i];
            PyObject *rid, *jobid, *payload;
            int ok;
            if (l->status == NEED_GIL) {
                ok = encode_one(self, l->s, l->n, l->alone, &rid, &jobid, &payload);
            } else if (l->status == 1) {
                ok = answer(l->hex, l->jobid, self->batch.data + l->start, l->len, &rid, &jobid, &payload);
            } else {
                continue;
            }
            if (ok < 0) {
                failed = 1;
                break;
            }
            if (ok == 0) continue;
            PyObject *index = PyLong_FromSsize_t(i);
            failed = index == NULL || PyList_Append(rids, rid) < 0 || PyList_Append(jobids, jobid) < 0 ||
                     PyList_Append(payloads, payload) < 0 || PyList_Append(at, index) < 0;
            Py_DECREF(rid);
            Py_DECREF(jobid);
            Py_DECREF(payload);
            Py_XDECREF(index);
        }
    }
    PyThread_release_lock(self->lock);
    PyMem_Free(at_line);
    Py_DECREF(held);
    if (failed) {
        Py_DECREF(rids);
        Py_DECREF(jobids);
        Py_DECREF(payloads);
        Py_DECREF(at);
        return NULL;
    }
    return Py_BuildValue("(NNNN)", rids, jobids, payloads, at);
}

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"offset_of_hour", "cluster", "max_bytes", "person", NULL};
    PyObject *offset_of_hour;
    const char *cluster, *person;
    Py_ssize_t cluster_len, person_len, max_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oy#ny#", kwlist, &offset_of_hour, &cluster, &cluster_len,
                                     &max_bytes, &person, &person_len))
        return -1;
    if (!PyCallable_Check(offset_of_hour)) {
        PyErr_SetString(PyExc_TypeError, "offset_of_hour must be callable");
        return -1;
    }
    if (person_len > 16) {
        PyErr_SetString(PyExc_ValueError, "person is at most 16 bytes");
        return -1;
    }
    char *copy = PyMem_Malloc((size_t)cluster_len + 1);
    if (copy == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(copy, cluster, (size_t)cluster_len);
    PyMem_Free(self->cluster);
    self->cluster = copy;
    self->cluster_len = cluster_len;
    self->max_bytes = max_bytes;
    memset(self->person, 0, 16);
    memcpy(self->person, person, (size_t)person_len);
    memset(self->hours, 0, sizeof self->hours);
    if (self->lock == NULL && (self->lock = PyThread_allocate_lock()) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(offset_of_hour);
    Py_XSETREF(self->offset_of_hour, offset_of_hour);
    return 0;
}

static void Encoder_dealloc(Encoder *self) {
    Py_XDECREF(self->offset_of_hour);
    PyMem_Free(self->cluster);
    PyMem_RawFree(self->batch.data);
    PyMem_RawFree(self->one.data);
    if (self->lock != NULL) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Encoder_methods[] = {
    {"encode_line", (PyCFunction)Encoder_encode_line, METH_O,
     "encode_line(line) -> (record id, job id, payload), or None when the line is not the usual record."},
    {"encode_lines", (PyCFunction)Encoder_encode_lines, METH_O,
     "encode_lines(lines) -> (record ids, job ids, payloads, indexes) of the lines it answers for."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "jobcompd._fastline.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(offset_of_hour, cluster, max_bytes, person): the usual record, compiled.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
};

static struct PyModuleDef fastline_module = {
    PyModuleDef_HEAD_INIT, "_fastline",
    "The compiled twin of jobcompd's reader for the usual record (see jobcompd/fastpath.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastline(void) {
    if (PyType_Ready(&EncoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&fastline_module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "CHUNK_BYTES", CHUNK_BYTES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
