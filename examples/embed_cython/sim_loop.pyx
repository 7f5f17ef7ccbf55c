# An embedding simulator's own Cython loop driving nvemu's core through its C-level API.
# Build: python setup.py build_ext --inplace (needs only nvemu/_core.pxd from the installed nvemu).

from libc.stdint cimport uint64_t

from nvemu._core cimport (Engine, NVEMU_CAPI_VERSION, OP_STORE, RUN_DONE, ST_COUNT, ST_STORES, trace_rec_t,
                          vm_t)

CAPI = NVEMU_CAPI_VERSION


def store_loop(Engine engine, int vm, uint64_t gpa, uint64_t count):
    """Issue ``count`` 8-byte stores to consecutive 8-byte words from ``gpa``, one record at a time,
    without the GIL: the way a simulator feeds the core from its own event loop."""
    cdef trace_rec_t rec
    cdef uint64_t i, stopped
    cdef int status = RUN_DONE
    rec.op = OP_STORE
    rec.vcpu = 0
    rec.vm = vm
    rec.size = 8
    with engine.lock, nogil:         # the engine's lock, held while its kernels run (numpy.random's pattern)
        for i in range(count):
            rec.gpa = gpa + 8 * i
            rec.value = i + 1
            status = engine.run_nogil(&rec, 0, 1, &stopped)
            if status != RUN_DONE:
                break
    return status


def translate(Engine engine, int vm, uint64_t gpa):
    """Translate through the core's TLB and walk, as vCPU 0, without the GIL."""
    cdef vm_t* v = &engine.vms[vm]
    cdef uint64_t hpa = 0, entry = 0, tlb_index = 0
    cdef int rc
    with engine.lock, nogil:
        rc = engine.translate_nogil(v, 0, gpa, False, &v.stats[0], &hpa, &entry, &tlb_index)
    return rc, hpa


def stores_counted(Engine engine, int vm):
    return engine.vms[vm].stats[ST_STORES]


STATS_PER_VCPU = ST_COUNT
