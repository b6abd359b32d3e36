# Bindings for csrc/embeddings.c (token + position embeddings).
from libc.stdint cimport int64_t

cdef extern from "embeddings.h" nogil:
    void embeddings_forward_f32(float* out, const int64_t* ids, const int64_t* lengths,
                                const float* token, const float* position, size_t B, size_t L,
                                size_t E)
    void embeddings_forward_f64(double* out, const int64_t* ids, const int64_t* lengths,
                                const double* token, const double* position, size_t B,
                                size_t L, size_t E)
    void embeddings_backward_f32(float* dtoken, float* dposition, const float* grad,
                                 const int64_t* ids, const int64_t* lengths, size_t B, size_t L,
                                 size_t E, size_t V, size_t S)
    void embeddings_backward_f64(double* dtoken, double* dposition, const double* grad,
                                 const int64_t* ids, const int64_t* lengths, size_t B,
                                 size_t L, size_t E, size_t V, size_t S)


cdef int _lm_check_ids(const int64_t[:, ::1] ids, const int64_t[::1] lengths,
                       Py_ssize_t V) except -1:
    """ValueError unless every id at a real position lies in [0, V)."""
    cdef Py_ssize_t b, t
    for b in range(ids.shape[0]):
        for t in range(lengths[b]):
            if ids[b, t] < 0 or ids[b, t] >= V:
                raise ValueError(f"id {ids[b, t]} at ({b}, {t}) is outside [0, {V})")
    return 0


def embeddings_forward(floating[:, :, ::1] out, const int64_t[:, ::1] ids,
                       const int64_t[::1] lengths, const floating[:, ::1] token,
                       const floating[:, ::1] position):
    """out (B, L, E) = token[ids] + position[:L]; padding rows 0."""
    cdef Py_ssize_t B = ids.shape[0], L = ids.shape[1], E = token.shape[1]
    _check_lengths(lengths, B, L)
    if out.shape[0] != B or out.shape[1] != L or out.shape[2] != E:
        raise ValueError("embeddings_forward: out must be (B, L, E)")
    if position.shape[1] != E or position.shape[0] < L or E < 1:
        raise ValueError("embeddings_forward: position must be (S, E) with S >= L")
    _lm_check_ids(ids, lengths, token.shape[0])
    with nogil:
        if floating is float:
            embeddings_forward_f32(&out[0, 0, 0], &ids[0, 0], &lengths[0], &token[0, 0],
                                   &position[0, 0], B, L, E)
        else:
            embeddings_forward_f64(&out[0, 0, 0], &ids[0, 0], &lengths[0], &token[0, 0],
                                   &position[0, 0], B, L, E)


def embeddings_backward(floating[:, ::1] dtoken, floating[:, ::1] dposition,
                        const floating[:, :, ::1] grad, const int64_t[:, ::1] ids,
                        const int64_t[::1] lengths):
    """Writes the gradients dtoken (V, E) and dposition (S, E) (overwritten)."""
    cdef Py_ssize_t B = ids.shape[0], L = ids.shape[1], E = dtoken.shape[1]
    _check_lengths(lengths, B, L)
    if grad.shape[0] != B or grad.shape[1] != L or grad.shape[2] != E:
        raise ValueError("embeddings_backward: grad must be (B, L, E)")
    if dposition.shape[1] != E or dposition.shape[0] < L or E < 1:
        raise ValueError("embeddings_backward: dposition must be (S, E) with S >= L")
    _lm_check_ids(ids, lengths, dtoken.shape[0])
    with nogil:
        if floating is float:
            embeddings_backward_f32(&dtoken[0, 0], &dposition[0, 0], &grad[0, 0, 0],
                                    &ids[0, 0], &lengths[0], B, L, E,
                                    dtoken.shape[0], dposition.shape[0])
        else:
            embeddings_backward_f64(&dtoken[0, 0], &dposition[0, 0], &grad[0, 0, 0],
                                    &ids[0, 0], &lengths[0], B, L, E,
                                    dtoken.shape[0], dposition.shape[0])
