using Lab.Tests.Vm;
using Lab.Vm;

namespace Lab.Props;

/// <summary>
/// An injected install result (§4.12). The pmap contract: false means the page is present
/// already (or gone, and an unmap event follows). So an injection installs the page and
/// reports false, as if a duplicate fault message's resolution had got there first
/// (UFFDIO_COPY's EEXIST): with the same bytes and protection, or write-protected (the
/// racing resolution was a read), so that the MMU raises a write-protect fault again.
/// </summary>
public enum Injected { No, Present, PresentReadOnly }

/// <summary>
/// The simulated page table of one process (the kernel's side of a pmap): present pages
/// with their own bytes, or the file's page-cache page for a shared mapping, a writable
/// bit, and poison markers. Every call the VM makes is checked against the oracle by the
/// <see cref="Runner"/> (prefault safety, protection, EOF, the faulting space).
/// </summary>
public sealed class PropPmap(Runner runner, Runner.Proc owner) : IPmap
{
    public const int Page = Layout.PageSize;

    public sealed class Pte
    {
        public required byte[] Bytes;   // own copy, or the vnode's cache page (Shared)
        public bool Shared;
        public bool Writable;
    }

    public readonly Dictionary<ulong, Pte> Ptes = new();
    public readonly HashSet<ulong> Poisoned = new();
    byte[] staging = new byte[Page * 4];
    public Runner.Proc Owner { get; set; } = owner;

    /// <summary>Calls that changed or tried to change the table (for the protection probe).</summary>
    public int Calls;

    public int PageSize => Page;

    static ulong Vpn(ulong va) => va / Page;

    public Span<byte> Staging(int pages)
    {
        if (staging.Length < pages * Page) staging = new byte[pages * Page];
        return staging.AsSpan(0, pages * Page);
    }

    public bool EnterCopy(ulong va, int pages, bool writable)
    {
        Calls++;
        for (int i = 0; i < pages; i++)
            runner.CheckInstall(Owner, va + (ulong)(i * Page), shared: false, writable, null, 0);
        var lie = runner.InjectInstallFailure(va, pages, writable);
        for (int i = 0; i < pages; i++)
            if (Ptes.ContainsKey(Vpn(va) + (ulong)i)) return false;
        for (int i = 0; i < pages; i++)
        {
            ulong p = Vpn(va) + (ulong)i;
            Ptes[p] = new Pte { Bytes = staging.AsSpan(i * Page, Page).ToArray(), Writable = writable && lie != Injected.PresentReadOnly };
            Poisoned.Remove(p);
        }
        return lie == Injected.No;
    }

    public bool EnterZero(ulong va, bool writable)
    {
        Calls++;
        runner.CheckInstall(Owner, va, shared: false, writable, null, 0);
        var lie = runner.InjectInstallFailure(va, 1, writable);
        if (Ptes.ContainsKey(Vpn(va))) return false;
        Ptes[Vpn(va)] = new Pte { Bytes = new byte[Page], Writable = writable && lie != Injected.PresentReadOnly };
        Poisoned.Remove(Vpn(va));
        return lie == Injected.No;
    }

    public bool EnterShared(ulong va, IVnode vnode, long pindex, bool writable)
    {
        Calls++;
        runner.CheckInstall(Owner, va, shared: true, writable, vnode, pindex);
        if (Ptes.ContainsKey(Vpn(va))) return false;
        Ptes[Vpn(va)] = new Pte { Bytes = ((MemVnode)vnode).CachePage(pindex), Shared = true, Writable = writable };
        Poisoned.Remove(Vpn(va));
        return true;
    }

    public void Protect(ulong va, ulong length, bool writeProtect)
    {
        Calls++;
        runner.CheckProtect(Owner, va, length, writeProtect);
        for (ulong p = Vpn(va); p < Vpn(va + length); p++)
            if (Ptes.TryGetValue(p, out var pte)) pte.Writable = !writeProtect;
    }

    public void Poison(ulong va)
    {
        Calls++;
        runner.CheckPoison(Owner, va);
        if (!Ptes.ContainsKey(Vpn(va))) Poisoned.Add(Vpn(va));
    }

    public void Wake(ulong va, ulong length) { }

    public bool ReadPage(ulong va, Span<byte> dest)
    {
        if (!Ptes.TryGetValue(Vpn(va), out var pte)) return false;
        pte.Bytes.CopyTo(dest);
        return true;
    }

    /// <summary>The page-out's unmap: the pages leave the table (a later access faults).</summary>
    public void Remove(ulong va, int pages)
    {
        Calls++;
        runner.CheckRemove(Owner, va);
        for (ulong p = Vpn(va); p < Vpn(va) + (ulong)pages; p++) Ptes.Remove(p);
    }

    // ---- what the kernel does on its own ----

    /// <summary>munmap, MADV_DONTNEED, mmap over a range: the pages and poison markers leave the table.</summary>
    public void Zap(ulong start, ulong length)
    {
        for (ulong p = Vpn(start); p < Vpn(start + length); p++) { Ptes.Remove(p); Poisoned.Remove(p); }
    }

    /// <summary>mprotect without write: the kernel clears the write bit of present pages.</summary>
    public void DropWrite(ulong start, ulong length)
    {
        for (ulong p = Vpn(start); p < Vpn(start + length); p++)
            if (Ptes.TryGetValue(p, out var pte)) pte.Writable = false;
    }

    /// <summary>mremap: page-table entries and poison markers move; the destination is unmapped first.</summary>
    public void Move(ulong from, ulong to, ulong length)
    {
        var moved = new List<(ulong, Pte)>();
        var poison = new List<ulong>();
        for (ulong p = Vpn(from); p < Vpn(from + length); p++)
        {
            if (Ptes.Remove(p, out var pte)) moved.Add((p - Vpn(from) + Vpn(to), pte));
            if (Poisoned.Remove(p)) poison.Add(p - Vpn(from) + Vpn(to));
        }
        Zap(to, length);
        foreach (var (p, pte) in moved) Ptes[p] = pte;
        foreach (var p in poison) Poisoned.Add(p);
    }

    /// <summary>fork: Linux copies present private pages (write protection included) and poison markers; shared pages fault again.</summary>
    public void CopyInto(PropPmap child)
    {
        foreach (var (p, pte) in Ptes)
            if (!pte.Shared) child.Ptes[p] = new Pte { Bytes = (byte[])pte.Bytes.Clone(), Writable = pte.Writable };
        foreach (var p in Poisoned) child.Poisoned.Add(p);
    }

    public void Clear() { Ptes.Clear(); Poisoned.Clear(); }
}
