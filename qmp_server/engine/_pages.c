/*
 * Optional accelerator for qmp_server.engine.guest: the "random" baseline of guest pages.
 *
 * The baseline is defined in guest.py (module rule 2): page i is the pool row (i mod rows)
 * XORed, word by word, with the SplitMix64 finaliser of (i XOR page_key).  guest.py computes
 * the same with numpy; this file only makes the two hot paths of a migration one memory pass
 * each: building pages to send (fill) and checking received pages against the baseline
 * (differs).  Results are identical to the numpy path (tests/engine/test_pages_accel.py).
 *
 * text_fill / text_differs do the same for the "text" baseline (text_fill.py): page i is the
 * text pool row (i mod rows) with about half its word starts (marks) upper-cased as the bits
 * of SplitMix64((64 i + word) XOR case_key) say, and the 8-byte slot at the start of each
 * 256-byte line replaced by 8 hex digits of SplitMix64((16 i + line) XOR page_key)
 * (tests/engine/test_text_fill.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PAGE_BYTES 4096
#define PAGE_WORDS (PAGE_BYTES / 8)

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the baseline words are little-endian: use the numpy path on this machine"
#endif

/* AVX2 doubles the width of the XOR loops; GCC picks the clone at load time (ifunc). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define WIDE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define WIDE_CLONES
#endif

static inline uint64_t page_mix(uint64_t index, uint64_t page_key)
{
    uint64_t z = (index ^ page_key) * 0x9E3779B97F4A7C15ULL;
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return z;
}

static inline void fill_page(uint64_t *out, const uint64_t *row, uint64_t key)
{
    for (int w = 0; w < PAGE_WORDS; w++) {
        out[w] = row[w] ^ key;
    }
}

static inline int page_differs(const uint64_t *data, const uint64_t *row, uint64_t key)
{
    uint64_t acc = 0;
    for (int w = 0; w < PAGE_WORDS; w++) {
        acc |= data[w] ^ row[w] ^ key;
    }
    return acc != 0;
}

/* Checks shared by every entry point; returns the pool's row count or -1 with an error. */
static Py_ssize_t pool_rows(const Py_buffer *pool)
{
    if (pool->len <= 0 || pool->len % PAGE_BYTES) {
        PyErr_SetString(PyExc_ValueError, "pool must be a positive number of pages");
        return -1;
    }
    return pool->len / PAGE_BYTES;
}

static int check_pages(const Py_buffer *buf, const char *what)
{
    if (buf->len % PAGE_BYTES) {
        PyErr_Format(PyExc_ValueError, "%s is not a whole number of pages", what);
        return -1;
    }
    return 0;
}

/* Page i of the output is the baseline of page index(k): start + k, or indexes[k]. */
static inline uint64_t nth_index(const int64_t *indexes, uint64_t start, Py_ssize_t k)
{
    return indexes ? (uint64_t)indexes[k] : start + (uint64_t)k;
}

WIDE_CLONES
static void fill_pages(uint64_t *dst, const uint64_t *base, uint64_t rows, uint64_t page_key,
                       const int64_t *ix, uint64_t start, Py_ssize_t pages)
{
    for (Py_ssize_t k = 0; k < pages; k++) {
        uint64_t i = nth_index(ix, start, k);
        fill_page(dst + k * PAGE_WORDS, base + (i % rows) * PAGE_WORDS, page_mix(i, page_key));
    }
}

WIDE_CLONES
static Py_ssize_t differing_pages(const uint64_t *src, const uint64_t *base, uint64_t rows,
                                  uint64_t page_key, const int64_t *ix, uint64_t start,
                                  Py_ssize_t pages, uint8_t *flags)
{
    Py_ssize_t count = 0;
    for (Py_ssize_t k = 0; k < pages; k++) {
        uint64_t i = nth_index(ix, start, k);
        int d = page_differs(src + k * PAGE_WORDS, base + (i % rows) * PAGE_WORDS,
                             page_mix(i, page_key));
        flags[k] = (uint8_t)d;
        count += d;
    }
    return count;
}

/* The optional int64 index buffer: *ix stays NULL for None (pages start, start+1, ...). */
static int open_indexes(PyObject *indexes, Py_buffer *idx, Py_ssize_t pages,
                        const int64_t **ix)
{
    *ix = NULL;
    if (indexes == Py_None) {
        return 0;
    }
    if (PyObject_GetBuffer(indexes, idx, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (idx->len != pages * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "one int64 index per page is needed");
        return -1;
    }
    *ix = (const int64_t *)idx->buf;
    return 0;
}

#define TEXT_LINE 256
#define TEXT_LINES (PAGE_BYTES / TEXT_LINE)
#define TEXT_SLOT 8

/* Two hex digits per byte value, so a slot is four 2-byte stores (and the flip table). */
static char hex_pairs[256][2];

/* flip_bytes[b]: byte k is 0x20 when bit k of b is set (case flips of 8 page bytes). */
static uint64_t flip_bytes[256];

static void init_hex_pairs(void)
{
    for (int b = 0; b < 256; b++) {
        uint64_t v = 0;
        for (int k = 0; k < 8; k++) {
            v |= (uint64_t)((b >> k) & 1) << (8 * k + 5);
        }
        flip_bytes[b] = v;
    }
    static const char hex[] = "0123456789abcdef";
    for (int b = 0; b < 256; b++) {
        hex_pairs[b][0] = hex[b >> 4];
        hex_pairs[b][1] = hex[b & 0xF];
    }
}

static inline void text_slots(uint8_t *page, uint64_t i, uint64_t page_key)
{
    for (int k = 0; k < TEXT_LINES; k++) {
        uint32_t v = (uint32_t)page_mix((i << 4) | (uint64_t)k, page_key);
        uint8_t *slot = page + k * TEXT_LINE;
        for (int d = 0; d < TEXT_SLOT / 2; d++) {
            memcpy(slot + 2 * d, hex_pairs[(v >> (24 - 8 * d)) & 0xFF], 2);
        }
    }
}

/* The keys and tables of one text baseline. */
struct text_spec {
    const uint8_t *base;   /* rows x 4096 bytes */
    const uint64_t *marks; /* rows x 64 words: word-start bits */
    uint64_t rows, page_key, case_key;
};

static inline void text_page(uint8_t *page, const struct text_spec *t, uint64_t i)
{
    uint64_t row = i % t->rows;
    const uint64_t *marks = t->marks + row * (PAGE_BYTES / 64);
    const uint8_t *src = t->base + row * PAGE_BYTES;
    uint64_t flips[PAGE_BYTES / 64];
    for (int w = 0; w < PAGE_BYTES / 64; w++) {
        flips[w] = marks[w] & page_mix((i << 6) | (uint64_t)w, t->case_key);
    }
    /* One pass: 8 bytes of the pool row, XORed with 8 flip bits expanded to 0x20 bytes. */
    for (int q = 0; q < PAGE_BYTES / 8; q++) {
        uint64_t v;
        memcpy(&v, src + q * 8, 8);
        v ^= flip_bytes[(flips[q >> 3] >> (8 * (q & 7))) & 0xFF];
        memcpy(page + q * 8, &v, 8);
    }
    text_slots(page, i, t->page_key);
}

static void text_fill_pages(uint8_t *dst, const struct text_spec *t, const int64_t *ix,
                            uint64_t start, Py_ssize_t pages)
{
    for (Py_ssize_t k = 0; k < pages; k++) {
        text_page(dst + k * PAGE_BYTES, t, nth_index(ix, start, k));
    }
}

static Py_ssize_t text_differing_pages(const uint8_t *src, const struct text_spec *t,
                                       const int64_t *ix, uint64_t start, Py_ssize_t pages,
                                       uint8_t *flags)
{
    uint8_t want[PAGE_BYTES];
    Py_ssize_t count = 0;
    for (Py_ssize_t k = 0; k < pages; k++) {
        text_page(want, t, nth_index(ix, start, k));
        int d = memcmp(want, src + k * PAGE_BYTES, PAGE_BYTES) != 0;
        flags[k] = (uint8_t)d;
        count += d;
    }
    return count;
}

PyDoc_STRVAR(fill_doc,
"fill(pool, page_key, start, out, indexes=None)\n"
"Write the baseline of pages start, start+1, ... (or of ``indexes``, int64) into ``out``.");

static PyObject *pages_fill(PyObject *self, PyObject *args)
{
    Py_buffer pool, out, idx = {0};
    unsigned long long page_key, start;
    PyObject *indexes = Py_None;
    if (!PyArg_ParseTuple(args, "y*KKw*|O", &pool, &page_key, &start, &out, &indexes)) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t rows = pool_rows(&pool);
    if (rows < 0 || check_pages(&out, "out") < 0) {
        goto done;
    }
    Py_ssize_t pages = out.len / PAGE_BYTES;
    const int64_t *ix;
    if (open_indexes(indexes, &idx, pages, &ix) < 0) {
        goto done;
    }
    const uint64_t *base = (const uint64_t *)pool.buf;
    uint64_t *dst = (uint64_t *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    fill_pages(dst, base, (uint64_t)rows, page_key, ix, start, pages);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    if (idx.obj) {
        PyBuffer_Release(&idx);
    }
    PyBuffer_Release(&pool);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(differs_doc,
"differs(pool, page_key, start, data, mask, indexes=None) -> int\n"
"For each page of ``data`` (pages start, start+1, ... or ``indexes``), set ``mask[k]`` to 1\n"
"when it differs from its baseline, else 0; return how many differ.");

static PyObject *pages_differs(PyObject *self, PyObject *args)
{
    Py_buffer pool, data, mask, idx = {0};
    unsigned long long page_key, start;
    PyObject *indexes = Py_None;
    if (!PyArg_ParseTuple(args, "y*KKy*w*|O", &pool, &page_key, &start, &data, &mask,
                          &indexes)) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t rows = pool_rows(&pool);
    if (rows < 0 || check_pages(&data, "data") < 0) {
        goto done;
    }
    Py_ssize_t pages = data.len / PAGE_BYTES;
    if (mask.len != pages) {
        PyErr_SetString(PyExc_ValueError, "mask needs one byte per page");
        goto done;
    }
    const int64_t *ix;
    if (open_indexes(indexes, &idx, pages, &ix) < 0) {
        goto done;
    }
    const uint64_t *base = (const uint64_t *)pool.buf;
    const uint64_t *src = (const uint64_t *)data.buf;
    uint8_t *flags = (uint8_t *)mask.buf;
    Py_ssize_t count;
    Py_BEGIN_ALLOW_THREADS
    count = differing_pages(src, base, (uint64_t)rows, page_key, ix, start, pages, flags);
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(count);
done:
    if (idx.obj) {
        PyBuffer_Release(&idx);
    }
    PyBuffer_Release(&pool);
    PyBuffer_Release(&data);
    PyBuffer_Release(&mask);
    return result;
}

PyDoc_STRVAR(text_fill_doc,
"text_fill(pool, marks, page_key, case_key, start, out, indexes=None)\n"
"Write the text baseline of pages start, start+1, ... (or of ``indexes``) into ``out``.");

/* Parses and checks pool and marks; fills *t.  Returns 0, or -1 with an error set. */
static int open_text_spec(Py_buffer *pool, Py_buffer *marks, unsigned long long page_key,
                          unsigned long long case_key, struct text_spec *t)
{
    Py_ssize_t rows = pool_rows(pool);
    if (rows < 0) {
        return -1;
    }
    if (marks->len != rows * (Py_ssize_t)(PAGE_BYTES / 8)) {
        PyErr_SetString(PyExc_ValueError, "marks need 64 words per pool row");
        return -1;
    }
    t->base = (const uint8_t *)pool->buf;
    t->marks = (const uint64_t *)marks->buf;
    t->rows = (uint64_t)rows;
    t->page_key = page_key;
    t->case_key = case_key;
    return 0;
}

static PyObject *pages_text_fill(PyObject *self, PyObject *args)
{
    Py_buffer pool, marks, out, idx = {0};
    unsigned long long page_key, case_key, start;
    PyObject *indexes = Py_None;
    if (!PyArg_ParseTuple(args, "y*y*KKKw*|O", &pool, &marks, &page_key, &case_key, &start,
                          &out, &indexes)) {
        return NULL;
    }
    PyObject *result = NULL;
    struct text_spec t;
    if (open_text_spec(&pool, &marks, page_key, case_key, &t) < 0 ||
        check_pages(&out, "out") < 0) {
        goto done;
    }
    Py_ssize_t pages = out.len / PAGE_BYTES;
    const int64_t *ix;
    if (open_indexes(indexes, &idx, pages, &ix) < 0) {
        goto done;
    }
    uint8_t *dst = (uint8_t *)out.buf;
    Py_BEGIN_ALLOW_THREADS
    text_fill_pages(dst, &t, ix, start, pages);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    if (idx.obj) {
        PyBuffer_Release(&idx);
    }
    PyBuffer_Release(&pool);
    PyBuffer_Release(&marks);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(text_differs_doc,
"text_differs(pool, marks, page_key, case_key, start, data, mask, indexes=None) -> int\n"
"Like differs() for the text baseline.");

static PyObject *pages_text_differs(PyObject *self, PyObject *args)
{
    Py_buffer pool, marks, data, mask, idx = {0};
    unsigned long long page_key, case_key, start;
    PyObject *indexes = Py_None;
    if (!PyArg_ParseTuple(args, "y*y*KKKy*w*|O", &pool, &marks, &page_key, &case_key, &start,
                          &data, &mask, &indexes)) {
        return NULL;
    }
    PyObject *result = NULL;
    struct text_spec t;
    if (open_text_spec(&pool, &marks, page_key, case_key, &t) < 0 ||
        check_pages(&data, "data") < 0) {
        goto done;
    }
    Py_ssize_t pages = data.len / PAGE_BYTES;
    if (mask.len != pages) {
        PyErr_SetString(PyExc_ValueError, "mask needs one byte per page");
        goto done;
    }
    const int64_t *ix;
    if (open_indexes(indexes, &idx, pages, &ix) < 0) {
        goto done;
    }
    const uint8_t *src = (const uint8_t *)data.buf;
    uint8_t *flags = (uint8_t *)mask.buf;
    Py_ssize_t count;
    Py_BEGIN_ALLOW_THREADS
    count = text_differing_pages(src, &t, ix, start, pages, flags);
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(count);
done:
    if (idx.obj) {
        PyBuffer_Release(&idx);
    }
    PyBuffer_Release(&pool);
    PyBuffer_Release(&marks);
    PyBuffer_Release(&data);
    PyBuffer_Release(&mask);
    return result;
}

static PyMethodDef pages_methods[] = {
    {"text_fill", pages_text_fill, METH_VARARGS, text_fill_doc},
    {"text_differs", pages_text_differs, METH_VARARGS, text_differs_doc},
    {"fill", pages_fill, METH_VARARGS, fill_doc},
    {"differs", pages_differs, METH_VARARGS, differs_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef pages_module = {
    PyModuleDef_HEAD_INIT, "qmp_server.engine._pages",
    "C fast path of the guest's random and text page baselines (see guest.py, text_fill.py).", -1, pages_methods,
};

PyMODINIT_FUNC PyInit__pages(void)
{
    init_hex_pairs();
    return PyModule_Create(&pages_module);
}
