/* Thread count shared by every parallel region, fork safety and the thread cap (threads.c).
 * common.h includes this header, so every kernel file sees it. */
#ifndef HYPERMIXER_THREADS_H
#define HYPERMIXER_THREADS_H

/* Thread count used by every parallel region (num_threads clause). 0 means "all":
 * omp_get_max_threads(), which respects OMP_NUM_THREADS. */
int hm_num_threads(void);
void hm_set_num_threads(int n);
int hm_openmp_enabled(void);
/* Installs the fork handler (once per process; called when the module loads). */
void hm_threads_init(void);
/* 1 in a child forked after a team may have started: kernels then run on one thread. */
int hm_forked_single_thread(void);
/* omp_get_max_threads(): OMP_NUM_THREADS or the number of cores, before the cap. */
int hm_default_threads(void);
int hm_max_threads(void);

/* The most threads any kernel uses. Above a few thousand libgomp fails to create threads (it
 * exits the process), and per-thread workspaces grow with the count; 1024 is more hardware
 * threads than any single machine we know of offers to one process. */
#define HM_MAX_THREADS 1024

#endif
