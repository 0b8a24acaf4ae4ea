/* The window's lookup table applied to 8- or 16-bit integer pixels: one compiled loop.
 *
 * unimed/ingest/intensity.py maps stored values to display values by a table with one entry per bit
 * pattern of the pixel type (value_table). numpy's `take` spends about 0.9 ns a pixel on the
 * indices (cast to intp) and the gather; this loop reads each pixel once and writes its entry, about
 * 0.3 ns. It uses only the buffer protocol (no numpy headers), holds no state and releases the GIL.
 * Where it is not built (no compiler at install), intensity.lookup takes numpy's path: the same bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static void
take_entries(const unsigned char *src, Py_ssize_t n, int index_bytes, const unsigned char *table,
             Py_ssize_t entry_bytes, unsigned char *dst)
{
    Py_ssize_t i;
    if (index_bytes == 2 && entry_bytes == 1) {
        for (i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, src + 2 * i, 2); /* an unaligned-safe load: the compiler makes it one move */
            dst[i] = table[v];
        }
    } else if (index_bytes == 2 && entry_bytes == 2) {
        for (i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, src + 2 * i, 2);
            memcpy(dst + 2 * i, table + 2 * (Py_ssize_t)v, 2);
        }
    } else if (index_bytes == 1 && entry_bytes == 1) {
        for (i = 0; i < n; i++)
            dst[i] = table[src[i]];
    } else {
        for (i = 0; i < n; i++) {
            Py_ssize_t v;
            if (index_bytes == 2) {
                uint16_t w;
                memcpy(&w, src + 2 * i, 2);
                v = w;
            } else {
                v = src[i];
            }
            memcpy(dst + entry_bytes * i, table + entry_bytes * v, (size_t)entry_bytes);
        }
    }
}

static PyObject *
lut_take(PyObject *self, PyObject *args)
{
    Py_buffer src, table, dst;
    int index_bytes;
    Py_ssize_t n, entry_bytes, entries;
    PyObject *result = NULL;
    (void)self;

    if (!PyArg_ParseTuple(args, "y*y*w*i", &src, &table, &dst, &index_bytes))
        return NULL;
    if (index_bytes != 1 && index_bytes != 2) {
        PyErr_Format(PyExc_ValueError, "take: pixels of 1 or 2 bytes, got %d", index_bytes);
        goto done;
    }
    entries = (Py_ssize_t)1 << (8 * index_bytes);
    n = src.len / index_bytes;
    if (src.len % index_bytes != 0 || table.len == 0 || table.len % entries != 0) {
        PyErr_Format(PyExc_ValueError, "take: %zd pixel bytes, a table of %zd bytes for %zd entries", src.len,
                     table.len, entries);
        goto done;
    }
    entry_bytes = table.len / entries;
    if (dst.len != n * entry_bytes) {
        PyErr_Format(PyExc_ValueError, "take: the output holds %zd bytes, %zd pixels need %zd", dst.len, n,
                     n * entry_bytes);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    take_entries((const unsigned char *)src.buf, n, index_bytes, (const unsigned char *)table.buf, entry_bytes,
                 (unsigned char *)dst.buf);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&table);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"take", lut_take, METH_VARARGS,
     "take(pixels, table, out, index_bytes): out[i] = table[pixels[i]], pixels read as native unsigned "
     "integers of index_bytes (1 or 2), the table holding 2**(8*index_bytes) entries of equal size."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lut", NULL, 0, methods};

PyMODINIT_FUNC
PyInit__lut(void)
{
    return PyModule_Create(&module);
}
