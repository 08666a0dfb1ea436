using System.Runtime.InteropServices;
using Lab.Vm;

namespace Lab.Linux;

/// <summary>
/// The process's agent (the shim's thread inside it): takes pages out of the process.
/// </summary>
public interface IUffdAgent
{
    /// <summary>
    /// Drop these pages (ascending), each with the check word of the bytes saved for it (0:
    /// none saved now); once they are out, their evictions complete. Never waits for the
    /// agent. False: the agent is gone (the evictions were aborted).
    /// </summary>
    bool Send(ReadOnlySpan<ulong> vas, ReadOnlySpan<ulong> saved);
}

/// <summary>
/// The pmap of one real process: installs pages in its address space through the
/// process's userfaultfd (UFFDIO_COPY / ZEROPAGE / CONTINUE / WRITEPROTECT / POISON / WAKE),
/// and takes them out through the process's agent (<see cref="Remove"/>). It is the only
/// place that issues UFFDIO_WAKE.
/// Errors that mean "the page or the range changed under us" (EEXIST, ENOENT, EAGAIN,
/// ESRCH) are not failures of the fault: the faulting thread is woken and retries, or
/// the process is gone.
/// </summary>
public sealed unsafe class UffdPmap : IPmap, IDisposable
{
    public const int MaxStagingPages = 64;
    const int Page = 4096;

    readonly byte* _staging;
    readonly Fd _uffd;

    /// <summary>ioctl failures other than the benign ones, for `lab stat` (install_errors).</summary>
    public long InstallErrors;
    public long Superseded;

    /// <summary>The managed thread that reads this uffd (set by its loop).</summary>
    public int ReaderThreadId;

    /// <summary>The process's pid, for <see cref="ReadPage"/> (0: unknown, pages cannot be read).</summary>
    public int Pid;

    /// <summary>
    /// Set by the process's reader: read pending uffd messages aside until an event has been
    /// read. While an event (our agent's MADV_DONTNEED, the program's munmap...) is unread,
    /// the kernel fails every install with EAGAIN; it hands out faults before events, so
    /// only reading past the faults lets the install go through.
    /// </summary>
    public Action? DrainEvents;

    /// <summary>EAGAIN on the reader thread: read the pending event aside, then try again (bounded).</summary>
    bool AgainAfterDrain(int errno, ref int tries)
    {
        // The kernel counts the event from before it is queued until its sender runs again
        // after the read: a preempted sender keeps it for a while, so back off to sleeping
        // (about 5 s in all before giving up).
        if (errno != Errno.EAGAIN || DrainEvents == null || Environment.CurrentManagedThreadId != ReaderThreadId || ++tries > 5200)
            return false;
        DrainEvents();
        if (tries > 200) Thread.Sleep(1);
        else if (tries > 1) Thread.Yield();
        return true;
    }

    public UffdPmap(Fd uffd)
    {
        _uffd = uffd;
        _staging = (byte*)NativeMemory.AlignedAlloc(MaxStagingPages * Page, Page);
    }

    public Fd Uffd => _uffd;
    public int PageSize => Page;

    /// <summary>UFFDIO_API on a uffd this daemon received. Returns 0 or errno.</summary>
    public static int Api(Fd uffd, ulong features, out ulong got)
    {
        var api = new Native.UffdioApi { Api = Native.UFFD_API, Features = features };
        int rc = Native.Ioctl(uffd, Native.UFFDIO_API, &api);
        got = api.Features;
        return rc == 0 ? 0 : Errno.Last;
    }

    public Span<byte> Staging(int pages)
    {
        if (pages < 1 || pages > MaxStagingPages) throw new ArgumentOutOfRangeException(nameof(pages));
        return new Span<byte>(_staging, pages * Page);
    }

    public bool EnterCopy(ulong va, int pages, bool writable)
    {
        var c = new Native.UffdioCopy
        {
            Dst = va, Src = (ulong)_staging, Len = (ulong)pages * Page,
            Mode = writable ? 0 : Native.UFFDIO_COPY_MODE_WP,
        };
        int tries = 0, e;
        while (true)
        {
            if (Native.Ioctl(_uffd, Native.UFFDIO_COPY, &c) == 0) return true;
            e = Errno.Last;
            if (!AgainAfterDrain(e, ref tries)) break;
        }
        if (e == Errno.EEXIST && pages > 1)
        {
            // Part of a cluster is already present: install the rest one page at a time.
            bool any = false;
            for (int i = 0; i < pages; i++)
            {
                var one = new Native.UffdioCopy
                {
                    Dst = va + (ulong)i * Page, Src = (ulong)(_staging + i * Page), Len = Page, Mode = c.Mode,
                };
                int t = 0;
                while (true)
                {
                    if (Native.Ioctl(_uffd, Native.UFFDIO_COPY, &one) == 0) { any = true; break; }
                    if (!AgainAfterDrain(Errno.Last, ref t)) break;
                }
            }
            if (!any) Wake(va, (ulong)pages * Page);
            return any;
        }
        return Failed(e, va, (ulong)pages * Page);
    }

    public bool EnterZero(ulong va, bool writable)
    {
        if (!writable)
        {
            new Span<byte>(_staging, Page).Clear();
            return EnterCopy(va, 1, false);
        }
        var z = new Native.UffdioZeropage { Range = new Native.UffdioRange { Start = va, Len = Page } };
        int tries = 0;
        while (true)
        {
            if (Native.Ioctl(_uffd, Native.UFFDIO_ZEROPAGE, &z) == 0) return true;
            int e = Errno.Last;
            if (!AgainAfterDrain(e, ref tries)) return Failed(e, va, Page);
        }
    }

    // Set once a write-protected UFFDIO_CONTINUE was refused (EINVAL): this process's shared
    // ranges are not registered for WP, so shared pages map writable (the old behaviour).
    bool _sharedWpUnsupported;

    public bool EnterShared(ulong va, IVnode vnode, long pindex, bool writable)
    {
        // The page is in the object's memfd (the pager loaded it) and the process maps that
        // memfd: UFFDIO_CONTINUE maps the page-cache page itself, as the entry allows. (The
        // range is registered for minor faults, so a page the agent zapped faults again on
        // its next touch instead of coming back from the page cache unseen.) A page the design
        // enters read-only is mapped write-protected (the shim registers shared ranges for
        // WP too), so the first write to it is a write-protect fault the design resolves.
        var c = new Native.UffdioContinue
        {
            Range = new Native.UffdioRange { Start = va, Len = Page },
            Mode = writable || _sharedWpUnsupported ? 0 : Native.UFFDIO_CONTINUE_MODE_WP,
        };
        int tries = 0, e;
        while (true)
        {
            if (Native.Ioctl(_uffd, Native.UFFDIO_CONTINUE, &c) == 0) return true;
            e = Errno.Last;
            if (e == Errno.EINVAL && c.Mode != 0)
            {
                // The range is not registered for WP (a shim or kernel without WP on shmem):
                // map it writable as before rather than fail the fault over and over.
                _sharedWpUnsupported = true;
                c.Mode = 0;
                continue;
            }
            if (!AgainAfterDrain(e, ref tries)) break;
        }
        // EEXIST: mapped meanwhile (another thread's fault). EFAULT: the page left the memfd
        // since it was loaded (a hole punched by drop_caches or a truncate): the woken thread
        // faults again and the fault loads it again.
        // EINVAL: the range is registered for missing faults only (a kernel without minor
        // faults on shmem): the woken thread maps the cached page itself, unseen as before.
        if (e is Errno.EEXIST or Errno.EINVAL) { Wake(va, Page); return true; }
        if (e == Errno.EFAULT) { Interlocked.Increment(ref Superseded); Wake(va, Page); return false; }
        return Failed(e, va, Page);
    }

    public void Protect(ulong va, ulong length, bool writeProtect)
    {
        var w = new Native.UffdioWriteprotect
        {
            Range = new Native.UffdioRange { Start = va, Len = length },
            Mode = writeProtect ? Native.UFFDIO_WRITEPROTECT_MODE_WP : 0,
        };
        int tries = 0;
        while (Native.Ioctl(_uffd, Native.UFFDIO_WRITEPROTECT, &w) != 0)
        {
            int e = Errno.Last;
            if (AgainAfterDrain(e, ref tries)) continue;
            // EAGAIN: a fork/unmap/remap event is still unread. Another thread (fork's
            // write-protect from the control socket) waits for the reader to take it;
            // the reader itself must not wait on itself.
            if (e == Errno.EAGAIN && Environment.CurrentManagedThreadId != ReaderThreadId && ++tries < 10_000)
            {
                Thread.Sleep(tries < 100 ? 0 : 1);
                continue;
            }
            if (!Benign(e)) Interlocked.Increment(ref InstallErrors);
            if (!writeProtect) Wake(va, length);
            return;
        }
    }

    public bool TryWriteProtect(ulong va, ulong length)
    {
        var w = new Native.UffdioWriteprotect
        {
            Range = new Native.UffdioRange { Start = va, Len = length },
            Mode = Native.UFFDIO_WRITEPROTECT_MODE_WP,
        };
        // EAGAIN: an event is waiting to be read, and the pageout keeps the reader out while
        // it scans: no use waiting. The scan stops; the page is left for a later one.
        if (Native.Ioctl(_uffd, Native.UFFDIO_WRITEPROTECT, &w) == 0) return true;
        int e = Errno.Last;
        if (!Benign(e)) Interlocked.Increment(ref InstallErrors);
        return false;
    }

    public void Poison(ulong va)
    {
        var p = new Native.UffdioPoison { Range = new Native.UffdioRange { Start = va, Len = Page } };
        int tries = 0;
        while (Native.Ioctl(_uffd, Native.UFFDIO_POISON, &p) != 0)
        {
            int e = Errno.Last;
            if (!AgainAfterDrain(e, ref tries)) { Failed(e, va, Page); return; }
        }
    }

    /// <summary>
    /// UFFDIO_UNREGISTER: the range leaves this uffd (the program registers it with its own).
    /// The kernel clears the range's write-protect markers and wakes faults waiting in it.
    /// Returns 0 or errno.
    /// </summary>
    public int Unregister(ulong va, ulong length)
    {
        var r = new Native.UffdioRange { Start = va, Len = length };
        return Native.Ioctl(_uffd, Native.UFFDIO_UNREGISTER, &r) == 0 ? 0 : Errno.Last;
    }

    public void Wake(ulong va, ulong length)
    {
        var r = new Native.UffdioRange { Start = va, Len = length };
        Native.Ioctl(_uffd, Native.UFFDIO_WAKE, &r);
    }

    public bool ReadPage(ulong va, Span<byte> dest)
    {
        if (Pid <= 0 || dest.Length < Page) return false;
        fixed (byte* d = dest)
        {
            var local = new Native.IoVec { Base = d, Len = Page };
            var remote = new Native.IoVec { Base = (void*)va, Len = Page };
            return Native.ProcessVmReadv(Pid, &local, 1, &remote, 1, 0) == Page;
        }
    }

    /// <summary>The process's agent, which takes removed pages out of the process; null until it connects.</summary>
    public volatile IUffdAgent? Agent;

    // Pages removed since the last SendRemoved, in the order the VM began their evictions
    // (pageout thread only: the VM calls Remove from the pageout's scan).
    ulong[] _removing = new ulong[256], _removingChecks = new ulong[256];
    int _removingCount;

    /// <summary>
    /// The page-out's removal: queued for the process's agent, which madvises them away
    /// inside the process. The batch goes once its saved bytes are committed
    /// (<see cref="SendRemoved"/>); the agent's reply completes the evictions.
    /// </summary>
    public void Remove(ulong va, int pages)
    {
        if (_removingCount + pages > _removing.Length)
        {
            Array.Resize(ref _removing, Math.Max(_removing.Length * 2, _removingCount + pages));
            Array.Resize(ref _removingChecks, _removing.Length);
        }
        for (int i = 0; i < pages; i++) _removing[_removingCount++] = va + (ulong)i * Page;
    }

    /// <summary>
    /// Pageout thread, once the saved bytes of the pages removed since the last call are
    /// committed: send them to the agent in one request. <paramref name="scanned"/> (ascending)
    /// and <paramref name="checks"/>: the check word of the bytes saved for each page, as the
    /// VM's scan gave them. False: the agent is gone (it aborted the evictions).
    /// </summary>
    public bool SendRemoved(ReadOnlySpan<ulong> scanned, ReadOnlySpan<ulong> checks)
    {
        int n = _removingCount;
        _removingCount = 0;
        if (n == 0) return true;
        if (Agent is not { } agent) throw new InvalidOperationException($"{n} pages removed from pid {Pid}, which has no agent");
        Array.Sort(_removing, 0, n);   // ascending: the agent's spans
        for (int i = 0, j = 0; i < n; i++)
        {
            while (j < scanned.Length && scanned[j] < _removing[i]) j++;
            _removingChecks[i] = j < scanned.Length && j < checks.Length && scanned[j] == _removing[i] ? checks[j] : 0;
        }
        return agent.Send(_removing.AsSpan(0, n), _removingChecks.AsSpan(0, n));
    }

    static bool Benign(int e) => e is Errno.EEXIST or Errno.ENOENT or Errno.EAGAIN or Errno.ESRCH or Errno.EINVAL;

    bool Failed(int errno, ulong va, ulong len)
    {
        if (Benign(errno)) Interlocked.Increment(ref Superseded);
        else Interlocked.Increment(ref InstallErrors);
        // Whatever happened, the faulting thread must not stay blocked: it retries the access.
        Wake(va, len);
        return false;
    }

    public void Dispose()
    {
        _uffd.Dispose();   // closes once no ioctl is in flight; later ones get EBADF
        NativeMemory.AlignedFree(_staging);
    }
}
