using System.Text;
using Lab.Vm.Uvm;

namespace Lab.Vm;

// Inspection: what the map holds, for the daemon, the CLI and the tests.
public sealed partial class AddressSpace
{
    /// <summary>
    /// How many layers a fault at <paramref name="va"/> may have to look through: the
    /// objects of the chain (Mach), or amap plus uobj (UVM); 0 without an entry.
    /// </summary>
    public int ChainDepth(ulong va)
    {
        lock (MapLock)
        {
            var e = FindEntry(va & ~PageMask);
            return e == null ? 0 : EntryDepth(e);
        }
    }

    /// <summary>The deepest <see cref="ChainDepth"/> over all entries: the chain-depth view of the space now.</summary>
    public int MaxChainDepth()
    {
        lock (MapLock)
        {
            int max = 0;
            foreach (var e in entries) max = Math.Max(max, EntryDepth(e));
            return max;
        }
    }

    int EntryDepth(VmMapEntry e) => Layer.Depth(e);

    /// <summary>Shared file pages in the range (msync / munmap write-back): the daemon marks them dirty and flushes.</summary>
    public IReadOnlyList<(IVnode Vnode, long FirstPindex, long Count)> SharedRanges(ulong start, ulong length)
    {
        ulong end = CheckRange(start & ~PageMask, length + (start & PageMask));
        start &= ~PageMask;
        var list = new List<(IVnode, long, long)>();
        lock (MapLock)
        {
            foreach (var e in entries)
            {
                if (!e.Shared || !e.EverWritable || e.End <= start || e.Start >= end) continue;
                ulong s = Math.Max(start, e.Start), t = Math.Min(end, e.End);
                long p = e.PindexOf(s);
                long n = (long)((t - s) >> Vm.PageShift);
                long eof = e.Object!.Size;
                if (p + n > eof) n = eof - p;
                if (n > 0) list.Add((e.Object.Vnode!, p, n));
            }
        }
        return list;
    }

    /// <summary>Every object the map reaches: first objects and their backing chains, once each (inspection).</summary>
    public IReadOnlyList<VmObject> Objects()
    {
        var list = new List<VmObject>();
        lock (MapLock)
        {
            foreach (var e in entries)
                for (var o = e.Object; o != null && !list.Contains(o); o = o.BackingObject)
                    list.Add(o);
        }
        return list;
    }

    /// <summary>
    /// One line per entry: start-end prot kind object offset needs_copy, then the chain
    /// depth (Mach) or the amap's used slots, size and references (UVM).
    /// </summary>
    public string DescribeMaps()
    {
        var sb = new StringBuilder();
        lock (MapLock)
        {
            foreach (var e in entries)
            {
                char r = (e.Protection & Prot.Read) != 0 ? 'r' : '-';
                char w = (e.Protection & Prot.Write) != 0 ? 'w' : '-';
                char x = (e.Protection & Prot.Exec) != 0 ? 'x' : '-';
                sb.Append($"{e.Start:x12}-{e.End:x12} {r}{w}{x} {e.KindName} {(object?)e.Object ?? "none"} ")
                  .Append($"offset {e.Offset} needs_copy {(e.needs_copy ? 1 : 0)}");
                Layer.Describe(e, sb);
                sb.Append('\n');
            }
        }
        return sb.ToString();
    }

    /// <summary>
    /// The first object (Mach) or uobj (UVM) and pindex the map gives for
    /// <paramref name="va"/>; null without an entry, or for UVM anonymous memory, which
    /// has no object (inspection and tests).
    /// </summary>
    public (VmObject Object, long Pindex)? ObjectAt(ulong va)
    {
        lock (MapLock)
        {
            var e = FindEntry(va);
            return e?.Object == null ? null : (e.Object, e.PindexOf(va & ~PageMask));
        }
    }

    /// <summary>Tests and the swap store to come: the anon at <paramref name="va"/> (UVM), or null.</summary>
    internal Anon? AnonAt(ulong va)
    {
        lock (MapLock)
        {
            var e = FindEntry(va);
            if (e?.aref_amap is not { } a) return null;
            lock (a.am_lock) return a.am_anon[e.SlotOf(va & ~PageMask)];
        }
    }

    /// <summary>UVM: the anon's reference count at <paramref name="va"/> (0: no amap or no anon there).</summary>
    public int AnonRefAt(ulong va)
    {
        lock (MapLock)
        {
            var e = FindEntry(va);
            if (e?.aref_amap is not { } a) return 0;
            lock (a.am_lock) return a.am_anon[e.SlotOf(va & ~PageMask)]?.an_ref ?? 0;
        }
    }

    /// <summary>Whether the model believes the page at <paramref name="va"/> is present in the pmap.</summary>
    public bool IsInstalled(ulong va)
    {
        lock (MapLock) return installed.Contains(va >> Vm.PageShift);
    }

    /// <summary>
    /// Whether the page at <paramref name="va"/> is a private page whose bytes live only in
    /// swap: paged out, not in the process. Linux swap is invisible to a program; a range
    /// that leaves the lab must get such pages back first (the daemon faults them in).
    /// </summary>
    public bool IsPagedOut(ulong va)
    {
        va &= ~PageMask;
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Ignore) || installed.Contains(va >> Vm.PageShift)) return false;
            var e = FindEntry(va);
            return e != null && !e.Shared && Layer.IsPagedOut(this, e, va);
        }
    }
}
