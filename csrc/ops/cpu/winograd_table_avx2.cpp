// The AVX2 build of the Winograd cores: winograd_AVX2() (see winograd.h).
#include "../../cpu/isa.h"
#if PDNET_X86_ISA_BUILDS
#define PDNET_ISA_BUILD_AVX2
#include "../../cpu/isa_build.h"
#include "winograd_table_impl.h"
PDNET_ISA_BUILD_END
#endif
