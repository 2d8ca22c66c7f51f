/* The C fast path of qmp_server/wire/encoder.py: the same bytes, without the interpreter.
 *
 * encode_line(value) returns the QMP output line of value (bytes ending "\r\n"), following
 * the encoder's rules: objects in QEMU's QDict order (tdb_hash(key) % 512 buckets, keys of
 * one bucket most recently inserted first), ", " and ": " separators, ASCII output with
 * uppercase \uXXXX escapes (surrogate pairs beyond the BMP), integers as integers, floats as
 * C's %.17g.  Anything it does not handle exactly (a type other than the exact dict, list,
 * tuple, str, int, float, bool and None; a key that is not ASCII) raises _Fallback, and the
 * caller encodes that message with the Python encoder: the two must agree byte for byte
 * (tests/wire/test_encoder_accel.py checks it with hypothesis). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *Fallback;
/* encoder.Encoded: a value whose line text was made once (registered at import) */
static PyObject *EncodedType = NULL;

typedef struct {
    char *buf;
    Py_ssize_t len;
    Py_ssize_t cap;
} Out;

static int out_reserve(Out *o, Py_ssize_t more)
{
    if (o->len + more <= o->cap) {
        return 0;
    }
    Py_ssize_t cap = o->cap ? o->cap : 256;
    while (cap < o->len + more) {
        cap *= 2;
    }
    char *grown = PyMem_Realloc(o->buf, (size_t)cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = grown;
    o->cap = cap;
    return 0;
}

static int out_put(Out *o, const char *s, Py_ssize_t n)
{
    if (out_reserve(o, n) < 0) {
        return -1;
    }
    memcpy(o->buf + o->len, s, (size_t)n);
    o->len += n;
    return 0;
}

static const char HEX[] = "0123456789ABCDEF";

static void put_u(char *p, unsigned cp)
{
    p[0] = '\\';
    p[1] = 'u';
    p[2] = HEX[(cp >> 12) & 15];
    p[3] = HEX[(cp >> 8) & 15];
    p[4] = HEX[(cp >> 4) & 15];
    p[5] = HEX[cp & 15];
}

static int put_string(Out *o, PyObject *s)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    /* worst case: 12 bytes per code point, plus the quotes */
    if (out_reserve(o, 12 * n + 2) < 0) {
        return -1;
    }
    char *p = o->buf + o->len;
    *p++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= 0x20 && c <= 0x7e && c != '"' && c != '\\') {
            *p++ = (char)c;
            continue;
        }
        switch (c) {
        case '"': *p++ = '\\'; *p++ = '"'; continue;
        case '\\': *p++ = '\\'; *p++ = '\\'; continue;
        case '\b': *p++ = '\\'; *p++ = 'b'; continue;
        case '\f': *p++ = '\\'; *p++ = 'f'; continue;
        case '\n': *p++ = '\\'; *p++ = 'n'; continue;
        case '\r': *p++ = '\\'; *p++ = 'r'; continue;
        case '\t': *p++ = '\\'; *p++ = 't'; continue;
        default: break;
        }
        if (c > 0xFFFF) {
            Py_UCS4 v = c - 0x10000;
            put_u(p, 0xD800 + (v >> 10));
            put_u(p + 6, 0xDC00 + (v & 0x3FF));
            p += 12;
        } else {
            put_u(p, (unsigned)c);
            p += 6;
        }
    }
    *p++ = '"';
    o->len = p - o->buf;
    return 0;
}

/* QEMU's tdb_hash of an ASCII key (modified UTF-8 only differs for NUL and non-ASCII). */
static int key_hash(PyObject *key, uint32_t *out)
{
    if (!PyUnicode_IS_ASCII(key)) {
        return -1;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(key);
    const unsigned char *raw = PyUnicode_1BYTE_DATA(key);
    uint32_t value = 0x238F13AFu * (uint32_t)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (raw[i] == 0) {
            return -1; /* NUL is two bytes in modified UTF-8: the Python path does it */
        }
        value += (uint32_t)raw[i] << (i * 5 % 24);
    }
    *out = 1103515243u * value + 12345u;
    return 0;
}

typedef struct {
    uint32_t bucket;
    Py_ssize_t index;
    PyObject *key;
    PyObject *value;
} Entry;

static int entry_cmp(const void *a, const void *b)
{
    const Entry *x = a, *y = b;
    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    return x->index > y->index ? -1 : (x->index < y->index ? 1 : 0); /* later first */
}

static int encode(Out *o, PyObject *v, int depth);

static int encode_dict(Out *o, PyObject *v, int depth)
{
    Py_ssize_t n = PyDict_GET_SIZE(v);
    if (n == 0) {
        return out_put(o, "{}", 2);
    }
    Entry local[32];
    Entry *entries = n <= 32 ? local : PyMem_Malloc(sizeof(Entry) * (size_t)n);
    if (entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = -1;
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(v, &pos, &key, &value)) {
        uint32_t h;
        if (!PyUnicode_CheckExact(key) || key_hash(key, &h) < 0) {
            PyErr_SetString(Fallback, "key");
            goto done;
        }
        entries[i].bucket = h % 512u;
        entries[i].index = i;
        entries[i].key = key;
        entries[i].value = value;
        i++;
    }
    qsort(entries, (size_t)n, sizeof(Entry), entry_cmp);
    for (i = 0; i < n; i++) {
        if (out_put(o, i == 0 ? "{" : ", ", i == 0 ? 1 : 2) < 0
            || put_string(o, entries[i].key) < 0 || out_put(o, ": ", 2) < 0
            || encode(o, entries[i].value, depth + 1) < 0) {
            goto done;
        }
    }
    rc = out_put(o, "}", 1);
done:
    if (entries != local) {
        PyMem_Free(entries);
    }
    return rc;
}

static int encode(Out *o, PyObject *v, int depth)
{
    if (depth > 1000) {
        PyErr_SetString(Fallback, "depth");
        return -1;
    }
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyUnicode_Type) {
        return put_string(o, v);
    }
    if (t == &PyDict_Type) {
        return encode_dict(o, v, depth);
    }
    if (v == Py_True) {
        return out_put(o, "true", 4);
    }
    if (v == Py_False) {
        return out_put(o, "false", 5);
    }
    if (v == Py_None) {
        return out_put(o, "null", 4);
    }
    if (t == &PyLong_Type) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow) {
            char tmp[32];
            int len = snprintf(tmp, sizeof tmp, "%lld", x);
            return out_put(o, tmp, len);
        }
        PyObject *text = PyObject_Str(v);
        if (text == NULL) {
            return -1;
        }
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(text, &len);
        int rc = s == NULL ? -1 : out_put(o, s, len);
        Py_DECREF(text);
        return rc;
    }
    if (t == &PyFloat_Type) {
        char *s = PyOS_double_to_string(PyFloat_AS_DOUBLE(v), 'g', 17, 0, NULL);
        if (s == NULL) {
            return -1;
        }
        int rc = out_put(o, s, (Py_ssize_t)strlen(s));
        PyMem_Free(s);
        return rc;
    }
    if (t == &PyList_Type || t == &PyTuple_Type) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(v);
        if (n == 0) {
            return out_put(o, "[]", 2);
        }
        PyObject **items = PySequence_Fast_ITEMS(v);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (out_put(o, i == 0 ? "[" : ", ", i == 0 ? 1 : 2) < 0
                || encode(o, items[i], depth + 1) < 0) {
                return -1;
            }
        }
        return out_put(o, "]", 1);
    }
    if (EncodedType != NULL && (PyObject *)t == EncodedType) {
        PyObject *text = PyObject_GetAttrString(v, "encoded");
        if (text == NULL) {
            return -1;
        }
        int rc;
        if (PyBytes_CheckExact(text)) {
            rc = out_put(o, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text));
        } else {
            PyErr_SetString(Fallback, "encoded");
            rc = -1;
        }
        Py_DECREF(text);
        return rc;
    }
    PyErr_SetString(Fallback, "type");
    return -1;
}

static PyObject *qjson_register_encoded(PyObject *self, PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "register_encoded takes a class");
        return NULL;
    }
    Py_XSETREF(EncodedType, Py_NewRef(cls));
    Py_RETURN_NONE;
}

static PyObject *qjson_encode_line(PyObject *self, PyObject *value)
{
    Out o = {NULL, 0, 0};
    PyObject *result = NULL;
    if (encode(&o, value, 0) == 0 && out_put(&o, "\r\n", 2) == 0) {
        result = PyBytes_FromStringAndSize(o.buf, o.len);
    }
    PyMem_Free(o.buf);
    return result;
}

static PyMethodDef qjson_methods[] = {
    {"encode_line", qjson_encode_line, METH_O,
     "encode_line(value) -> bytes: the QMP output line of value, as encoder.encode_line"},
    {"register_encoded", qjson_register_encoded, METH_O,
     "register_encoded(cls): instances of cls carry their encoding in .encoded (bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef qjson_module = {
    PyModuleDef_HEAD_INIT, "qmp_server.wire._qjson",
    "C fast path of qmp_server/wire/encoder.py (the same bytes).", -1, qjson_methods,
};

PyMODINIT_FUNC PyInit__qjson(void)
{
    PyObject *m = PyModule_Create(&qjson_module);
    if (m == NULL) {
        return NULL;
    }
    Fallback = PyErr_NewException("qmp_server.wire._qjson.Fallback", NULL, NULL);
    if (Fallback == NULL || PyModule_AddObjectRef(m, "Fallback", Fallback) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
