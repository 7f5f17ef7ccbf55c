# Included by _checkcore.pyx: the checker kernel's records and lists -- record kinds, where a
# line's durable copy lives, one pending store (Rec), an intrusive list of them (List) and a
# reported violation (Event) -- and the two list operations, all without the GIL.

# record kinds (what the Python side classified each record as)
cdef enum:
    K_NONE = 0      # a load, a skipped record, or memory that is not a vNVDIMM's
    K_FENCE = 1
    K_VFHA = 2      # a STORE or NT_STORE to the VM's vFHA page
    K_STORE = 3
    K_NT = 4
    K_FLUSH = 5     # CLWB, CLFLUSHOPT, CLFLUSH of a vNVDIMM line (slot -1: a line the trace never stored)

cdef enum:
    MEDIA = 0
    QUEUE = 1
    CACHE = 2

cdef struct Rec:
    int64_t i           # op index of the store
    int64_t done        # op index its protocol completed at
    int64_t gpa
    int64_t first_point
    int64_t first_rank
    uint64_t value
    uint64_t found
    uint64_t lost       # bit k: byte k of the store
    uint64_t cur        # bytes of the line lost at the crash point being judged
    int32_t slot
    int32_t vm
    int32_t cpu
    int32_t nxt
    uint8_t off
    uint8_t size
    uint8_t op
    uint8_t is_open
    uint8_t flagged
    uint8_t need_found  # ``found`` is the engine's media after the chunk (_want_found)

cdef struct List:
    int32_t head
    int32_t tail

cdef struct Event:
    int64_t kind        # 0 lost (a run that ended), 1 unfenced
    int64_t store
    int64_t point
    int64_t until
    int64_t points
    int64_t completed
    int64_t vm
    int64_t cpu
    int64_t op
    int64_t size
    int64_t gpa
    int64_t hpa
    uint64_t value
    uint64_t found
    uint64_t lost
    int64_t need_found


cdef inline void _push(List* l, Rec* recs, int32_t r) noexcept nogil:
    recs[r].nxt = -1
    if l.tail < 0:
        l.head = r
    else:
        recs[l.tail].nxt = r
    l.tail = r


cdef inline void _splice(List* dst, List* src, Rec* recs) noexcept nogil:
    """Append all of ``src`` to ``dst`` and empty ``src``."""
    if src.head < 0:
        return
    if dst.tail < 0:
        dst.head = src.head
    else:
        recs[dst.tail].nxt = src.head
    dst.tail = src.tail
    src.head = -1
    src.tail = -1
