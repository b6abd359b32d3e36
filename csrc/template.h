/* Compile a kernel file twice, once for float and once for double.
 *
 * A kernel file defines HM_TEMPLATE_FILE as its own name and includes this header when REAL is
 * not yet defined; this header then includes the file back with REAL = float and F(name) =
 * name_f32, and again with double / _f64. Inside the body, REAL is the element type and F()
 * suffixes every function name (static helpers included); SQRT/EXP/LOG are the
 * math functions of that precision. No include guard, on purpose. */
#include <math.h>
#include "common.h"

#define REAL float
#define F(name) name##_f32
#define SQRT sqrtf
#define EXP expf
#define LOG logf
#include HM_TEMPLATE_FILE
#undef REAL
#undef F
#undef SQRT
#undef EXP
#undef LOG

#define REAL double
#define F(name) name##_f64
#define SQRT sqrt
#define EXP exp
#define LOG log
#include HM_TEMPLATE_FILE
#undef REAL
#undef F
#undef SQRT
#undef EXP
#undef LOG
