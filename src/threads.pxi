cdef extern from "threads.h" nogil:
    int hm_num_threads()
    void hm_set_num_threads(int n)
    int hm_openmp_enabled()
    void hm_threads_init()
    int hm_forked_single_thread()
    int hm_default_threads()
    int hm_max_threads()

hm_threads_init()

MAX_THREADS = hm_max_threads()


def openmp_enabled():
    return bool(hm_openmp_enabled())


def get_num_threads():
    return hm_num_threads()


def default_num_threads():
    return hm_default_threads()


def forked_single_thread():
    return bool(hm_forked_single_thread())


def set_num_threads(int n):
    hm_set_num_threads(n)
