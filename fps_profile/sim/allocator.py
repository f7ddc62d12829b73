"""A model of PyTorch's CUDA caching allocator (native backend, default settings).

``torch.cuda.max_memory_allocated`` is the peak of the sizes of the *blocks*
handed to live tensors, not of the bytes they asked for. The rules that set a
block's size, from ``c10/cuda/CUDACachingAllocator.cpp``:

* every request is rounded up to a multiple of 512 bytes (minimum 512; a
  zero-byte tensor gets no block);
* requests up to 1 MiB come from the small pool, whose segments are 2 MiB;
  larger ones from the large pool, whose segments are 20 MiB for requests
  under 10 MiB and the request rounded up to 2 MiB otherwise;
* a request takes the smallest free block that fits (lowest address first);
  the block is split only if the remainder is at least 512 bytes (small pool)
  or more than 1 MiB (large pool), so a large request can hold up to 1 MiB
  more than it asked for, and ``allocated`` counts it all;
* a freed block merges with free neighbours of its segment;
  ``empty_cache`` returns segments that are entirely free.

Not modelled: ``PYTORCH_CUDA_ALLOC_CONF`` options (``max_split_size_mb``,
``roundup_power2_divisions``, ``expandable_segments``, garbage collection),
several streams, and the retry that frees the cache when ``cudaMalloc`` fails.
"""

from __future__ import annotations

import bisect

from fps_profile.trackers.cuda import MIN_BLOCK, round_size  # noqa: F401 (round_size: the allocator's rule)
SMALL_SIZE = 1 << 20
SMALL_BUFFER = 2 << 20
LARGE_BUFFER = 20 << 20
MIN_LARGE_ALLOC = 10 << 20
ROUND_LARGE = 2 << 20


def segment_size(size: int) -> int:
    """Bytes ``cudaMalloc``-ed for a new segment that must hold a block of ``size``."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


class Block:
    """A piece of a segment, allocated or free."""

    __slots__ = ("addr", "size", "small", "allocated", "prev", "next")

    def __init__(self, addr: int, size: int, small: bool) -> None:
        self.addr, self.size, self.small = addr, size, small
        self.allocated = False
        self.prev: Block | None = None
        self.next: Block | None = None


class CachingAllocator:
    """Block-level bookkeeping of one device and one stream.

    Attributes:
        allocated: Bytes in allocated blocks (``memory_allocated``).
        reserved: Bytes in segments (``memory_reserved``).
        peak_allocated: Highest ``allocated`` since creation or :meth:`reset_peak`.
        peak_reserved: Highest ``reserved`` likewise.
    """

    def __init__(self) -> None:
        self._pools: dict[bool, list[tuple[int, int, Block]]] = {True: [], False: []}
        self._next_addr = 1 << 32
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0

    def malloc(self, nbytes: int) -> Block | None:
        """Allocate a block for a request of ``nbytes``; None for zero bytes."""
        size = round_size(nbytes)
        if size == 0:
            return None
        small = size <= SMALL_SIZE
        pool = self._pools[small]
        i = bisect.bisect_left(pool, (size, -1))
        if i < len(pool):
            block = pool.pop(i)[2]
        else:
            seg = segment_size(size)
            block = Block(self._next_addr, seg, small)
            self._next_addr += seg
            self.reserved += seg
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        remaining = block.size - size
        if remaining >= MIN_BLOCK if small else remaining > SMALL_SIZE:
            rest = Block(block.addr + size, remaining, small)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            bisect.insort(pool, (rest.size, rest.addr, rest))
        block.allocated = True
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return block

    def free(self, block: Block | None) -> None:
        """Return ``block`` to its pool, merged with free neighbours."""
        if block is None:
            return
        block.allocated = False
        self.allocated -= block.size
        pool = self._pools[block.small]
        for other in (block.prev, block.next):
            if other is not None and not other.allocated:
                del pool[bisect.bisect_left(pool, (other.size, other.addr))]
                if other is block.prev:
                    other.size += block.size
                    other.next = block.next
                    if block.next is not None:
                        block.next.prev = other
                    block = other
                else:
                    block.size += other.size
                    block.next = other.next
                    if other.next is not None:
                        other.next.prev = block
        bisect.insort(pool, (block.size, block.addr, block))

    def empty_cache(self) -> None:
        """Release every segment that is entirely free (``torch.cuda.empty_cache``)."""
        for small, pool in self._pools.items():
            keep = []
            for entry in pool:
                b = entry[2]
                if b.prev is None and b.next is None:
                    self.reserved -= b.size
                else:
                    keep.append(entry)
            self._pools[small] = keep

    def reset_peak(self) -> None:
        """Start new peaks from the current figures (``reset_peak_memory_stats``)."""
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved
