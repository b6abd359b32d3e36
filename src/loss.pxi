# Bindings for csrc/loss.c (softmax cross-entropy).
from libc.stdint cimport int64_t

cdef extern from "loss.h" nogil:
    void cross_entropy_forward_f32(double* loss, double* row_loss, float* probs,
                                   const float* logits, const int64_t* targets,
                                   const int64_t* lengths, size_t B, size_t L, size_t V)
    void cross_entropy_forward_f64(double* loss, double* row_loss, double* probs,
                                   const double* logits, const int64_t* targets,
                                   const int64_t* lengths, size_t B, size_t L, size_t V)
    void cross_entropy_backward_f32(float* grad, const float* probs, const int64_t* targets,
                                    const int64_t* lengths, size_t B, size_t L, size_t V)
    void cross_entropy_backward_f64(double* grad, const double* probs, const int64_t* targets,
                                    const int64_t* lengths, size_t B, size_t L, size_t V)


def cross_entropy(floating[:, :, ::1] grad, double[:, ::1] row_loss,
                  const floating[:, :, ::1] logits, const int64_t[:, ::1] targets,
                  const int64_t[::1] lengths):
    """Returns the loss and writes d loss / d logits into grad (B, L, V) (which first holds
    the softmax); row_loss (B, L) float64 receives the per-position losses."""
    cdef Py_ssize_t B = logits.shape[0], L = logits.shape[1], V = logits.shape[2]
    cdef double loss = 0
    _check_lengths(lengths, B, L)
    if V < 1:
        raise ValueError("cross_entropy: no classes (V = 0)")
    if targets.shape[0] != B or targets.shape[1] != L:
        raise ValueError("cross_entropy: targets must be (B, L)")
    if grad.shape[0] != B or grad.shape[1] != L or grad.shape[2] != V:
        raise ValueError("cross_entropy: grad must be (B, L, V)")
    if row_loss.shape[0] != B or row_loss.shape[1] != L:
        raise ValueError("cross_entropy: row_loss must be (B, L)")
    _lm_check_ids(targets, lengths, V)
    with nogil:
        if floating is float:
            cross_entropy_forward_f32(&loss, &row_loss[0, 0], &grad[0, 0, 0], &logits[0, 0, 0],
                                      &targets[0, 0], &lengths[0], B, L, V)
            cross_entropy_backward_f32(&grad[0, 0, 0], &grad[0, 0, 0], &targets[0, 0],
                                       &lengths[0], B, L, V)
        else:
            cross_entropy_forward_f64(&loss, &row_loss[0, 0], &grad[0, 0, 0], &logits[0, 0, 0],
                                      &targets[0, 0], &lengths[0], B, L, V)
            cross_entropy_backward_f64(&grad[0, 0, 0], &grad[0, 0, 0], &targets[0, 0],
                                       &lengths[0], B, L, V)
    return loss
