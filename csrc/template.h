/* Compile a kernel file twice, once for float and once for double.
 *
 * A kernel file defines HM_TEMPLATE_FILE as its own name and includes this header when REAL is
 * not yet defined; this header then includes the file back with REAL = float and F(name) =
 * name_f32, and again with double / _f64. Inside the body, REAL is the element type and F()
 * suffixes function names (static helpers, and calls to other kernels); SQRT/EXP/LOG are the
 * math functions of that precision. No include guard, on purpose.
 *
 * KERNEL_NAME(f32_name, f64_name) is the one of its two arguments that belongs to the current
 * pass. Every exported kernel is defined with it, both full names written out, so that
 * `grep -rn layernorm_forward_f32 csrc` lands on the definition:
 *     void KERNEL_NAME(layernorm_forward_f32, layernorm_forward_f64)(REAL* y, ...)
 * A misspelt name cannot slip through: it would have no prototype in the file's header, which
 * the build refuses (-Wmissing-prototypes -Werror, CMakeLists.txt). */
#include <math.h>
#include "common.h"

#define REAL float
#define F(name) name##_f32
#define KERNEL_NAME(f32_name, f64_name) f32_name
#define SQRT sqrtf
#define EXP expf
#define LOG logf
#include HM_TEMPLATE_FILE
#undef REAL
#undef F
#undef KERNEL_NAME
#undef SQRT
#undef EXP
#undef LOG

#define REAL double
#define F(name) name##_f64
#define KERNEL_NAME(f32_name, f64_name) f64_name
#define SQRT sqrt
#define EXP exp
#define LOG log
#include HM_TEMPLATE_FILE
#undef REAL
#undef F
#undef KERNEL_NAME
#undef SQRT
#undef EXP
#undef LOG
