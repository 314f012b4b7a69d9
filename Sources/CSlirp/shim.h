// The one C header slirpd sees: libslirp's public API, nothing else.
#include <slirp/libslirp.h>
