/* Libraries that are not valid angzarr Go libraries, for the bridge's load-error tests (plain
 * C, so that no second Go runtime starts in the test process):
 *   -DWRONG_ABI        exports every function, but ABI version 999;
 *   -DMISSING_SYMBOL   exports version 1 and angzarr_handle, but no angzarr_free. */
#include <stddef.h>
#include <stdint.h>

#ifdef WRONG_ABI
uint32_t angzarr_abi_version(void) { return 999; }
void angzarr_free(void *buffer) { (void)buffer; }
#else
uint32_t angzarr_abi_version(void) { return 1; }
#endif

int32_t angzarr_handle(uint64_t snapshot_every, const uint8_t *command, size_t command_len,
                       uint8_t **out, size_t *out_len) {
    (void)snapshot_every; (void)command; (void)command_len;
    *out = NULL;
    *out_len = 0;
    return 4;
}
