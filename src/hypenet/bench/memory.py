"""Units and the peak-memory rule shared by the benchmark reports (`hypenet bench`, `bench-train`, `bench-scaling`).

Memory is in GiB (2**30 bytes) everywhere; bandwidth in GB/s (10**9 bytes/s, the convention for bandwidth). Peak
memory is the CUDA caching allocator's peak (torch.cuda.max_memory_allocated), reset per case: it exists on a CUDA
device only. Off CUDA a report leaves the column out and says why once, rather than showing an empty column.
(A CPU process's peak RSS is no substitute: it is one high-water mark for the whole process, the libraries and every
earlier case included, that cannot be reset between cases.) Torch-free, so that the reports load without it.
"""

from __future__ import annotations

GIB = 2**30  # bytes in a GiB: every memory figure of the benchmarks
GB = 10**9  # bytes in a GB: bandwidth only (GB/s)

UNITS = {
    "*_gib": "GiB (2**30 bytes)",
    "peak_mem_gib, prefill_peak_mem_gib": "GiB, the CUDA allocator's peak (torch.cuda.max_memory_allocated) during "
                                          "the case; null off CUDA (not measured)",
    "bandwidth_gbps": "GB/s (10**9 bytes per second, read + write), not gigabits",
}


def measures_peak_memory(device: str | None) -> bool:
    """Whether a report of a run on `device` (machine_info's "device", e.g. "cuda:0", "cpu") has peak memory; an
    unknown device (None: a report without it) is taken to have it."""
    return device is None or str(device).partition(":")[0] == "cuda"


def peak_memory_note(device: str | None) -> str:
    """Why a report of a run on `device` has no peak-memory column."""
    return (f"no peak-memory column: peak memory is the CUDA allocator's peak (torch.cuda.max_memory_allocated), "
            f"measured on a CUDA GPU only, and the device here is {device}; a CPU process's peak RSS is no substitute "
            "(one high-water mark for the whole process, libraries and earlier cases included)")


__all__ = ["GB", "GIB", "UNITS", "measures_peak_memory", "peak_memory_note"]
