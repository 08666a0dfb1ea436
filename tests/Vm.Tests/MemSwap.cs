using Lab.Vm;

namespace Lab.Tests.Vm;

/// <summary>
/// An in-memory swap device: one byte array per slot, slots never reused, an optional
/// capacity, and injectable corruption. A corrupt slot reads as Corrupt and is marked
/// bad, as the daemon's store will.
/// </summary>
public sealed class MemSwap : ISwapDevice
{
    readonly Dictionary<long, byte[]> slots = new();
    readonly HashSet<long> corrupt = new();
    public readonly HashSet<long> Bad = new();
    long next;

    /// <summary>Most slots held at once (0: no limit).</summary>
    public int Capacity { get; set; }
    public int Writes, Reads, Frees;
    public readonly List<(SwapOwnerKind Kind, long Id, long Index)> Owners = new();

    public int InUse { get { lock (slots) return slots.Count; } }

    public long Write(SwapOwnerKind kind, long ownerId, long ownerIndex, ReadOnlySpan<byte> page)
    {
        lock (slots)
        {
            if (Capacity > 0 && slots.Count >= Capacity) return 0;
            Writes++;
            Owners.Add((kind, ownerId, ownerIndex));
            slots[++next] = page[..4096].ToArray();
            return next;
        }
    }

    public SwapReadResult Read(long slot, Span<byte> dest)
    {
        lock (slots)
        {
            Reads++;
            if (corrupt.Contains(slot))
            {
                Bad.Add(slot);
                return SwapReadResult.Corrupt;
            }
            if (!slots.TryGetValue(slot, out var b)) return SwapReadResult.Missing;
            b.CopyTo(dest);
            return SwapReadResult.Ok;
        }
    }

    public void Free(long slot)
    {
        lock (slots)
        {
            if (!slots.Remove(slot)) throw new InvalidOperationException($"free of swap slot {slot} not in use");
            Frees++;
        }
    }

    /// <summary>Make the next reads of <paramref name="slot"/> fail their check.</summary>
    public void Corrupt(long slot) { lock (slots) corrupt.Add(slot); }

    /// <summary>The slot most recently written.</summary>
    public long LastSlot { get { lock (slots) return next; } }
}
