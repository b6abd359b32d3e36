/* Thread-count control shared by all kernels, fork safety and the thread cap. */
#include "threads.h"

#include <pthread.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Set from Python (single writer) before kernels run; read at the start of each region. */
static int requested_threads = 0;

/* libgomp keeps its worker threads in a pool that a fork() does not copy: a child that asks
 * for a team of more than one thread waits forever for workers that do not exist. So once a
 * team may have started here, a forked child runs every kernel on the calling thread. */
static int team_may_exist = 0;
static int forked_after_team = 0;

static void child_after_fork(void)
{
    if (__atomic_load_n(&team_may_exist, __ATOMIC_RELAXED)) {
        forked_after_team = 1;
    }
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, child_after_fork);
}

void hm_threads_init(void)
{
    pthread_once(&atfork_once, register_fork_handler);
}

int hm_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int hm_forked_single_thread(void)
{
    return forked_after_team;
}

int hm_num_threads(void)
{
    int n;
    if (forked_after_team) {
        return 1;
    }
    if (requested_threads > 0) {
        n = requested_threads;
    } else {
#ifdef _OPENMP
        n = omp_get_max_threads();
#else
        n = 1;
#endif
    }
    /* libgomp reads an OMP_NUM_THREADS beyond INT_MAX as a negative count */
    if (n > HM_MAX_THREADS || n < 1) {
        n = HM_MAX_THREADS;
    }
    if (n > 1) {
        __atomic_store_n(&team_may_exist, 1, __ATOMIC_RELAXED);
    }
    return n;
}

void hm_set_num_threads(int n)
{
    requested_threads = n > 0 ? (n < HM_MAX_THREADS ? n : HM_MAX_THREADS) : 0;
}

int hm_max_threads(void)
{
    return HM_MAX_THREADS;
}

int hm_default_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
