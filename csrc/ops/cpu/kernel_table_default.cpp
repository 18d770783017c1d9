// The DEFAULT build of the vectorised CPU cores: table_DEFAULT() (see kernel_table.h).
#define PDNET_ISA_BUILD_DEFAULT
#include "../../cpu/isa_build.h"
#include "kernel_table_impl.h"
PDNET_ISA_BUILD_END
