/* Prints the control protocol's layout as the C compiler sees it (lab/preload/labproto.h):
 * "STRUCT size N" for every message struct, "STRUCT.FIELD offset N" for every field,
 * "version N", and "const NAME N" for the flag values the daemon reads (Proto.NAME).
 * ControlProtocolTests compares each line with the C# mirror in lab/Linux/Control.cs. */
#include <stddef.h>
#include <stdio.h>
#include <sys/mman.h>

#include "../../lab/preload/labproto.h"

#define S(t) printf("%s size %zu\n", #t, sizeof(struct t))
#define F(t, f) printf("%s.%s offset %zu\n", #t, #f, offsetof(struct t, f))

int main(void)
{
    printf("version %d\n", LAB_PROTO_VERSION);
    printf("max_payload %d\n", LAB_MAX_PAYLOAD);
    /* Flag values the daemon reads from lab_range.flags (the advice of LAB_ADVISE, LAB_WIRE's). */
    printf("const MadvNormal %d\n", MADV_NORMAL);
    printf("const MadvRandom %d\n", MADV_RANDOM);
    printf("const MadvSequential %d\n", MADV_SEQUENTIAL);
    printf("const MadvWillNeed %d\n", MADV_WILLNEED);
    printf("const MadvDontFork %d\n", MADV_DONTFORK);
    printf("const MadvDoFork %d\n", MADV_DOFORK);
    printf("const MadvWipeOnFork %d\n", MADV_WIPEONFORK);
    printf("const MadvKeepOnFork %d\n", MADV_KEEPONFORK);
    printf("const WireOn %d\n", LAB_WIRE_ON);
    printf("const WireFault %d\n", LAB_WIRE_FAULT);
    S(lab_hdr); F(lab_hdr, type); F(lab_hdr, len); F(lab_hdr, seq); F(lab_hdr, status);
    S(lab_hello); F(lab_hello, version); F(lab_hello, flags); F(lab_hello, pid); F(lab_hello, ppid);
    F(lab_hello, vm); F(lab_hello, comm); F(lab_hello, run_id);
    S(lab_hello_reply); F(lab_hello_reply, features);
    S(lab_map); F(lab_map, addr); F(lab_map, len); F(lab_map, prot); F(lab_map, flags); F(lab_map, kind);
    F(lab_map, pad); F(lab_map, ino); F(lab_map, offset);
    S(lab_open_shared); F(lab_open_shared, ino);
    S(lab_open_shared_reply); F(lab_open_shared_reply, size);
    S(lab_range); F(lab_range, addr); F(lab_range, len); F(lab_range, prot); F(lab_range, flags);
    S(lab_reaped); F(lab_reaped, pid); F(lab_reaped, pad);
    S(lab_remap); F(lab_remap, old_addr); F(lab_remap, old_len); F(lab_remap, new_addr); F(lab_remap, new_len);
    F(lab_remap, flags); F(lab_remap, pad);
    S(lab_stat); F(lab_stat, run_id);
    S(lab_agent_hello); F(lab_agent_hello, pid); F(lab_agent_hello, pad); F(lab_agent_hello, scratch);
    F(lab_agent_hello, scratch_len);
    S(lab_span); F(lab_span, addr); F(lab_span, len);
    S(lab_set_limit); F(lab_set_limit, run_id); F(lab_set_limit, bytes);
    S(lab_fork_done); F(lab_fork_done, child_pid); F(lab_fork_done, pad);
    S(lab_outside); F(lab_outside, file_pages); F(lab_outside, stack_pages); F(lab_outside, heap_pages);
    F(lab_outside, anon_pages); F(lab_outside, other_pages); F(lab_outside, flags); F(lab_outside, pad);
    return 0;
}
