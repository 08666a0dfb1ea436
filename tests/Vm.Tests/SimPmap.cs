namespace Lab.Tests.Vm;

/// <summary>A signal the simulated MMU raised.</summary>
public sealed class SimSignalException(string signal, ulong va) : Exception($"{signal} at 0x{va:x}")
{
    public string Signal { get; } = signal;
    public ulong Va { get; } = va;
}

/// <summary>
/// A simulated page table for one address space: present pages with their own bytes
/// (EnterCopy/EnterZero) or a reference to a file's page-cache page (EnterShared),
/// a writable bit, and poison markers. <see cref="Read"/> and <see cref="Write"/>
/// behave like the MMU: they fault into the space and retry.
/// </summary>
public sealed class SimPmap : IPmap
{
    public const int Page = 4096;

    sealed class Pte
    {
        public byte[] Bytes = null!;   // own copy, or the vnode's cache page
        public bool Shared;
        public bool Writable;
    }

    readonly Dictionary<ulong, Pte> ptes = new();
    readonly HashSet<ulong> poisoned = new();
    byte[] staging = new byte[Page * 4];

    public AddressSpace Space { get; set; } = null!;
    public int PageSize => Page;
    public int Enters, Protects, Poisons, Wakes;
    public readonly List<FaultAccess> Faults = new();

    static ulong Vpn(ulong va) => va / Page;

    public Span<byte> Staging(int pages)
    {
        if (staging.Length < pages * Page) staging = new byte[pages * Page];
        return staging.AsSpan(0, pages * Page);
    }

    public bool EnterCopy(ulong va, int pages, bool writable)
    {
        for (int i = 0; i < pages; i++)
            if (ptes.ContainsKey(Vpn(va) + (ulong)i)) return false;
        for (int i = 0; i < pages; i++)
        {
            var bytes = staging.AsSpan(i * Page, Page).ToArray();
            ptes[Vpn(va) + (ulong)i] = new Pte { Bytes = bytes, Writable = writable };
            poisoned.Remove(Vpn(va) + (ulong)i);
        }
        Enters++;
        return true;
    }

    public bool EnterZero(ulong va, bool writable)
    {
        if (ptes.ContainsKey(Vpn(va))) return false;
        ptes[Vpn(va)] = new Pte { Bytes = new byte[Page], Writable = writable };
        poisoned.Remove(Vpn(va));
        Enters++;
        return true;
    }

    public bool EnterShared(ulong va, IVnode vnode, long pindex, bool writable)
    {
        if (ptes.ContainsKey(Vpn(va))) return false;
        ptes[Vpn(va)] = new Pte { Bytes = ((MemVnode)vnode).CachePage(pindex), Shared = true, Writable = writable };
        poisoned.Remove(Vpn(va));
        Enters++;
        return true;
    }

    public void Protect(ulong va, ulong length, bool writeProtect)
    {
        Protects++;
        for (ulong p = Vpn(va); p < Vpn(va + length); p++)
            if (ptes.TryGetValue(p, out var pte)) pte.Writable = !writeProtect;
    }

    public void Poison(ulong va)
    {
        Poisons++;
        if (!ptes.ContainsKey(Vpn(va))) poisoned.Add(Vpn(va));
    }

    public void Wake(ulong va, ulong length) => Wakes++;

    public int Removes;

    public bool ReadPage(ulong va, Span<byte> dest)
    {
        if (!ptes.TryGetValue(Vpn(va), out var pte)) return false;
        pte.Bytes.CopyTo(dest);
        return true;
    }

    public void Remove(ulong va, int pages)
    {
        Removes++;
        Zap(va, (ulong)pages * Page);
    }

    // ---- the MMU ----

    public bool Present(ulong va) => ptes.ContainsKey(Vpn(va));
    public bool Writable(ulong va) => ptes.TryGetValue(Vpn(va), out var p) && p.Writable;
    public int PresentCount => ptes.Count;

    public byte Read(ulong va)
    {
        for (int tries = 0; ; tries++)
        {
            if (poisoned.Contains(Vpn(va))) throw new SimSignalException("SIGBUS", va);
            if (ptes.TryGetValue(Vpn(va), out var pte)) return pte.Bytes[va % Page];
            if (tries > 2) throw new InvalidOperationException($"read fault at 0x{va:x} never resolved");
            Fault(va, FaultAccess.Read);
        }
    }

    public void Write(ulong va, byte value)
    {
        for (int tries = 0; ; tries++)
        {
            if (poisoned.Contains(Vpn(va))) throw new SimSignalException("SIGBUS", va);
            if (ptes.TryGetValue(Vpn(va), out var pte) && pte.Writable)
            {
                pte.Bytes[va % Page] = value;
                return;
            }
            if (tries > 2) throw new InvalidOperationException($"write fault at 0x{va:x} never resolved");
            Fault(va, pte == null ? FaultAccess.Write : FaultAccess.WriteProtect);
        }
    }

    public byte[] ReadPage(ulong va)
    {
        var b = new byte[Page];
        for (int i = 0; i < Page; i++) b[i] = Read(va - va % Page + (ulong)i);
        return b;
    }

    void Fault(ulong va, FaultAccess access)
    {
        Faults.Add(access);
        var r = Space.Fault(va, access);
        if (r == FaultResult.SigSegv) throw new SimSignalException("SIGSEGV", va);
        if (r == FaultResult.SigBus && !poisoned.Contains(Vpn(va)))
            throw new InvalidOperationException("SigBus without a poisoned page");
    }

    // ---- what the kernel does on its own ----

    /// <summary>munmap / MADV_DONTNEED: the pages leave the page table.</summary>
    public void Zap(ulong start, ulong length)
    {
        for (ulong p = Vpn(start); p < Vpn(start + length); p++) { ptes.Remove(p); poisoned.Remove(p); }
    }

    /// <summary>mremap: the page-table entries move.</summary>
    public void Move(ulong from, ulong to, ulong length)
    {
        var moved = new List<(ulong, Pte)>();
        for (ulong p = Vpn(from); p < Vpn(from + length); p++)
            if (ptes.Remove(p, out var pte)) moved.Add((p - Vpn(from) + Vpn(to), pte));
        Zap(to, length);
        foreach (var (p, pte) in moved) ptes[p] = pte;
    }

    /// <summary>fork: Linux copies the present private pages (write protection included); shared file pages are faulted again.</summary>
    public SimPmap CloneForFork()
    {
        var c = new SimPmap();
        foreach (var (p, pte) in ptes)
            if (!pte.Shared) c.ptes[p] = new Pte { Bytes = (byte[])pte.Bytes.Clone(), Writable = pte.Writable };
        foreach (var p in poisoned) c.poisoned.Add(p);
        return c;
    }

    public void Clear() { ptes.Clear(); poisoned.Clear(); }
}

/// <summary>A process: the simulated pmap (the kernel's side) and the model's address space, kept in step as the shim and daemon would.</summary>
public sealed class SimProcess
{
    public SimProcess(Lab.Vm.Vm vm, IResolver? resolver = null)
    {
        Pmap = new SimPmap();
        Space = vm.CreateSpace(Pmap, resolver ?? Resolvers.Create("freebsd"));
        Pmap.Space = Space;
    }

    SimProcess(SimPmap pmap, AddressSpace space) { Pmap = pmap; Space = space; }

    public SimPmap Pmap { get; }
    public AddressSpace Space { get; }
    public VmCounters C => Space.Counters;

    public byte Read(ulong va) => Pmap.Read(va);
    public void Write(ulong va, byte b) => Pmap.Write(va, b);

    public void MapAnon(ulong start, ulong len, Prot prot = Prot.Read | Prot.Write)
    {
        Pmap.Zap(start, len);
        Space.MapAnon(start, len, prot);
    }

    public void MapFile(ulong start, ulong len, MemVnode v, long offset = 0, bool shared = false, Prot prot = Prot.Read | Prot.Write)
    {
        Pmap.Zap(start, len);
        Space.MapFile(start, len, prot, v, offset, shared);
    }

    public void Munmap(ulong start, ulong len) { Pmap.Zap(start, len); Space.Unmap(start, len); }
    public void DontNeed(ulong start, ulong len) { Pmap.Zap(start, len); Space.Remove(start, len); }
    public void Mremap(ulong from, ulong to, ulong len) { Pmap.Move(from, to, len); Space.Remap(from, to, len); }

    public SimProcess Fork()
    {
        Space.ForkProtect();
        var cp = Pmap.CloneForFork();
        var cs = Space.Fork(cp);
        cp.Space = cs;
        return new SimProcess(cp, cs);
    }

    public void Exit() { Space.Destroy(); Pmap.Clear(); }
}
