// The DEFAULT build of the Winograd cores: winograd_DEFAULT() (see winograd.h).
#define PDNET_ISA_BUILD_DEFAULT
#include "../../cpu/isa_build.h"
#include "winograd_table_impl.h"
PDNET_ISA_BUILD_END
