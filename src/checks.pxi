from libc.stdint cimport int64_t

# Argument checks shared by every binding (one set, not one per kernel file). The Layer
# classes validate user input before they call in here; these checks keep a wrong internal
# call from reaching C, where it could read or write out of bounds.

cdef int _check_dims(tuple dims) except -1:
    """ValueError unless every dimension is in 1..INT_MAX. The kernels take size_t sizes; the
    bound is the one the Layer classes enforce (INDEX_LIMIT in _layer.py), so a dimension
    beyond it can only come from a wrong internal call."""
    cdef Py_ssize_t n
    for n in dims:
        if n < 1:
            raise ValueError(f"empty shape {dims}")
        if n > 2147483647:
            raise ValueError("dimension too large for the kernels")
    return 0


cdef int _check_lengths(const int64_t[::1] lengths, Py_ssize_t B, Py_ssize_t L) except -1:
    """ValueError unless lengths is (B,) with every entry in 1..L."""
    if B < 1 or L < 1:
        raise ValueError(f"empty batch (B={B}, L={L})")
    if lengths.shape[0] != B:
        raise ValueError(f"lengths has {lengths.shape[0]} entries, the batch has {B}")
    return _check_length_values(&lengths[0], B, L)


cdef int _check_length_values(const int64_t* lengths, Py_ssize_t B, Py_ssize_t L) except -1:
    """ValueError unless lengths[0..B) all lie in 1..L (for callers holding a pointer)."""
    cdef Py_ssize_t b
    for b in range(B):
        if lengths[b] < 1 or lengths[b] > L:
            raise ValueError(f"lengths[{b}] = {lengths[b]} is outside 1..{L}")
    return 0


cdef int _check_shape(object name, tuple got, tuple want) except -1:
    if got != want:
        raise ValueError(f"{name} has shape {got}, expected {want}")
    return 0
