using System.Numerics;

namespace Lab.Vm;

/// <summary>
/// A set of virtual page numbers as bitmaps of 512 pages (one per 2 MiB of address
/// space): what a space has installed in its pmap. About one bit per page instead of
/// a hash-set entry (20+ bytes). A chunk stays allocated when its last bit is cleared,
/// so pages that come and go (MADV_DONTNEED, refaults) allocate nothing; chunks go
/// with <see cref="Clear"/>. Not thread-safe: the owning space's map lock guards it.
/// </summary>
internal sealed class PageSet
{
    const int ChunkShift = 9;                      // 512 pages per chunk
    const ulong ChunkMask = (1UL << ChunkShift) - 1;
    const int Words = 1 << (ChunkShift - 6);       // 8 ulongs

    readonly Dictionary<ulong, ulong[]> chunks = new();
    // The chunk of the last lookup: faults are mostly near the previous one.
    ulong lastKey = ulong.MaxValue;
    ulong[]? lastBits;

    public int Count { get; private set; }

    ulong[]? Chunk(ulong vpn, bool create)
    {
        ulong key = vpn >> ChunkShift;
        if (key == lastKey) return lastBits;
        if (!chunks.TryGetValue(key, out var bits))
        {
            if (!create) return null;
            bits = new ulong[Words];
            chunks.Add(key, bits);
        }
        lastKey = key;
        lastBits = bits;
        return bits;
    }

    public bool Contains(ulong vpn)
    {
        var bits = Chunk(vpn, create: false);
        return bits != null && (bits[(int)(vpn & ChunkMask) >> 6] & (1UL << (int)(vpn & 63))) != 0;
    }

    public bool Add(ulong vpn)
    {
        var bits = Chunk(vpn, create: true)!;
        ref ulong w = ref bits[(int)(vpn & ChunkMask) >> 6];
        ulong bit = 1UL << (int)(vpn & 63);
        if ((w & bit) != 0) return false;
        w |= bit;
        Count++;
        return true;
    }

    public bool Remove(ulong vpn)
    {
        var bits = Chunk(vpn, create: false);
        if (bits == null) return false;
        ref ulong w = ref bits[(int)(vpn & ChunkMask) >> 6];
        ulong bit = 1UL << (int)(vpn & 63);
        if ((w & bit) == 0) return false;
        w &= ~bit;
        Count--;
        return true;
    }

    /// <summary>Remove every page in [first, last).</summary>
    public void RemoveRange(ulong first, ulong last) => Visit(first, last, null, remove: true);

    /// <summary>Append the pages in [first, last) to <paramref name="into"/> (ascending within each chunk).</summary>
    public void CollectRange(ulong first, ulong last, List<ulong> into) => Visit(first, last, into, remove: false);

    void Visit(ulong first, ulong last, List<ulong>? into, bool remove)
    {
        if (last <= first || Count == 0) return;
        ulong k0 = first >> ChunkShift, k1 = (last - 1) >> ChunkShift;
        if (k1 - k0 < (ulong)chunks.Count)
        {
            for (ulong k = k0; k <= k1; k++)
                if (chunks.TryGetValue(k, out var bits)) VisitChunk(k, bits, first, last, into, remove);
        }
        else
        {
            foreach (var (k, bits) in chunks)
                if (k >= k0 && k <= k1) VisitChunk(k, bits, first, last, into, remove);
        }
    }

    void VisitChunk(ulong key, ulong[] bits, ulong first, ulong last, List<ulong>? into, bool remove)
    {
        ulong basePage = key << ChunkShift;
        for (int i = 0; i < Words; i++)
        {
            ulong w = bits[i];
            while (w != 0)
            {
                int b = BitOperations.TrailingZeroCount(w);
                w &= w - 1;
                ulong vpn = basePage + (ulong)(i * 64 + b);
                if (vpn < first || vpn >= last) continue;
                into?.Add(vpn);
                if (remove)
                {
                    bits[i] &= ~(1UL << b);
                    Count--;
                }
            }
        }
    }

    /// <summary>
    /// Copy up to <paramref name="into"/>.Length pages, in ascending order, starting at the
    /// first page at or after <paramref name="from"/> and wrapping around to the lowest page
    /// once (a clock hand). Returns how many were copied. Allocates a sorted key array: for
    /// the pageout's scans, not for faults.
    /// </summary>
    public int CollectFrom(ulong from, Span<ulong> into)
    {
        if (Count == 0 || into.IsEmpty) return 0;
        var keys = new ulong[chunks.Count];
        chunks.Keys.CopyTo(keys, 0);
        Array.Sort(keys);
        int n = 0;
        ulong k0 = from >> ChunkShift;
        int start = Array.BinarySearch(keys, k0);
        if (start < 0) start = ~start;
        // Pass 1: from the hand to the top; pass 2: from the bottom up to the hand.
        for (int pass = 0; pass < 2 && n < into.Length; pass++)
        {
            int lo = pass == 0 ? start : 0, hi = pass == 0 ? keys.Length : Math.Min(start + 1, keys.Length);
            for (int ki = lo; ki < hi && n < into.Length; ki++)
            {
                ulong key = keys[ki], basePage = key << ChunkShift;
                var bits = chunks[key];
                for (int i = 0; i < Words && n < into.Length; i++)
                {
                    ulong w = bits[i];
                    while (w != 0 && n < into.Length)
                    {
                        int b = BitOperations.TrailingZeroCount(w);
                        w &= w - 1;
                        ulong vpn = basePage + (ulong)(i * 64 + b);
                        if (pass == 0 ? vpn < from : vpn >= from) continue;
                        into[n++] = vpn;
                    }
                }
            }
        }
        return n;
    }

    public void Clear()
    {
        chunks.Clear();
        lastKey = ulong.MaxValue;
        lastBits = null;
        Count = 0;
    }
}
