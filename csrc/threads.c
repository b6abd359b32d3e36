/* Thread-count control shared by all kernels. */
#include "common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Set from Python (single writer) before kernels run; read at the start of each region. */
static int requested_threads = 0;

int hm_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int hm_num_threads(void)
{
    if (requested_threads > 0) {
        return requested_threads;
    }
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void hm_set_num_threads(int n)
{
    requested_threads = n > 0 ? n : 0;
}
