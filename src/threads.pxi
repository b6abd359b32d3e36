cdef extern from "common.h" nogil:
    int hm_num_threads()
    void hm_set_num_threads(int n)
    int hm_openmp_enabled()


def openmp_enabled():
    return bool(hm_openmp_enabled())


def get_num_threads():
    return hm_num_threads()


def set_num_threads(int n):
    hm_set_num_threads(n)
