using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Lab.Fusefs;
using Lab.Linux;
using Lab.Vm;

namespace Lab.Daemon;

/// <summary>
/// The lab daemon: one FUSE mount, one VM, one control socket. `lab mount` starts it;
/// SIGINT, SIGTERM or `lab unmount` end it, after dirty pages are written back.
/// </summary>
/// <remarks>
/// Lock order (the daemon's locks; a lock may be taken while holding only those above it):
/// <code>
///   EvictAgent._finishGate               (an agent's reply; Pageout.cs)
///     UffdReader.Handling                (a process's uffd messages being applied; lab/Linux)
///       AddressSpace.MapLock → amap → objects   (the VM's own order: lab/Vm/README.md)
///         EvictAgent._gate               (Covers, asked with the map lock held; never held while taking it)
///         CachedFile._lock, StoreSwapDevice._gate   (page cache and swap I/O; leaves)
///   Registry._gate → LabProcess._children
///   PageoutDaemon._runs, ControlServer._conns, EvictAgent._sendGate   (leaves)
///   Log's gate                           (a leaf: logging is allowed under any lock)
/// </code>
/// FUSE request threads take CachedFile locks (and a map lock to render a `.lab` file);
/// nothing on the fault path holds a lock while it waits for a FUSE request, so the fault
/// path never waits on FUSE.
/// </remarks>
public sealed class LabDaemon : ILabDirectory, IDisposable
{
    public readonly Registry Registry;
    readonly Lab.Vm.Vm _vm = new();
    readonly string _backing, _mountpoint, _defaultVm;
    // One adapter per page cache (so one VM object per file), found from the cache itself: a number
    // would find a deleted file's adapter for the next file given that number.
    readonly ConditionalWeakTable<CachedFile, VnodeAdapter> _vnodes = new();
    LabFileSystem? _fs;
    FuseServer? _server;
    ControlServer? _control;
    ExecWatch? _execWatch;   // null: the process connector is not available
    readonly ManualResetEventSlim _stop = new();
    int _shutdown;
    readonly StoreSwapDevice? _swap;
    readonly string? _swapPath;
    readonly bool _removeSwapAtExit;
    readonly FileStream? _swapLock;
    public readonly PageoutDaemon Pageout;

    public LabDaemon(string backing, string mountpoint, string defaultVm, DaemonOptions? options = null)
    {
        options ??= new DaemonOptions();
        _backing = backing; _mountpoint = mountpoint; _defaultVm = defaultVm;
        Registry = new Registry(defaultVm);
        if (options.SwapPath != "none")
        {
            _removeSwapAtExit = options.SwapPath == null;
            _swapPath = options.SwapPath ?? System.IO.Path.Combine(SocketDirectory, $"swap-{Environment.ProcessId}.db");
            // Only the default store's directory is ours to make; a missing directory in a path the
            // user gave is a mistake to report, not something to create as root.
            var swapDir = System.IO.Path.GetDirectoryName(_swapPath)!;
            if (_removeSwapAtExit) Directory.CreateDirectory(swapDir);
            else if (!Directory.Exists(swapDir)) throw new LabException($"--swap {_swapPath}: directory {swapDir} does not exist");
            // The store is emptied at open: never under another daemon that is using it.
            try { _swapLock = new FileStream(_swapPath + "-lock", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
            catch (IOException) { throw new LabException($"swap store {_swapPath} is in use by another lab daemon"); }
            catch (UnauthorizedAccessException e) { throw new LabException($"swap store {_swapPath}: {e.Message}"); }
            Lab.Swapstore.SwapStore store;
            try
            {
                store = Lab.Swapstore.SwapStore.Open(_swapPath, new Lab.Swapstore.SwapStoreOptions
                {
                    ClearOnOpen = true, MaxSlots = options.SwapMaxBytes / 4096,
                });
            }
            catch
            {
                _swapLock.Dispose();
                System.IO.File.Delete(_swapPath + "-lock");
                throw;
            }
            _swap = new StoreSwapDevice(store);
            _vm.Swap = _swap;
        }
        Pageout = new PageoutDaemon(Registry, _swap, options.MemoryBytes);
        Registry.RunForgotten = Pageout.ForgetRun;
    }

    /// <summary>The swap store file, or null without swap.</summary>
    public string? SwapPath => _swapPath;

    public static string SocketDirectory =>
        Native.GetUid() == 0 ? "/run/lab" : System.IO.Path.Combine(Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") ?? "/tmp", "lab");

    // ILabDirectory: `.lab/` in the mount (read at open; never on the fault path).
    public string ControlSocketPath => _control?.Path ?? "";

    public IReadOnlyList<string>? List(string dir)
    {
        switch (dir)
        {
            case "": return new[] { "stats", "processes/", "objects/" };
            case "processes": return Registry.Live().Where(p => p.Pid > 0).Select(p => $"{p.Pid}/").Distinct().ToArray();
            case "objects": return LiveObjects().Select(o => o.Id.ToString()).ToArray();
        }
        return dir.StartsWith("processes/") && FindProcess(dir["processes/".Length..]) != null
            ? new[] { "maps", "stats" } : null;
    }

    public byte[]? Render(string path)
    {
        string? text = path.Split('/') switch
        {
            ["stats"] => StatsText(0),
            ["processes", var pid, "maps"] => FindProcess(pid) is { } p ? DescribeMaps(p) : null,
            ["processes", var pid, "stats"] => FindProcess(pid) is { } p ? ProcessStats(p) : null,
            ["objects", var id] => LiveObjects().FirstOrDefault(o => o.Id.ToString() == id) is { } o ? DescribeObject(o) : null,
            _ => null,
        };
        return text == null ? null : System.Text.Encoding.UTF8.GetBytes(text);
    }

    /// <summary>The newest live image of a pid (an exec'd image replaces the old one).</summary>
    LabProcess? FindProcess(string pid) =>
        int.TryParse(pid, out int n) && n > 0 ? Registry.Live().LastOrDefault(p => p.Pid == n) : null;

    IEnumerable<VmObject> LiveObjects() =>
        Registry.Live().SelectMany(p => p.Space.Objects()).Distinct().OrderBy(o => o.Id);

    static string DescribeMaps(LabProcess p) =>
        $"# pid {p.Pid} {p.Comm}, vm {p.Space.Resolver.Name}: start-end prot kind object offset needs_copy depth|amap\n"
        + p.Space.DescribeMaps();

    static string ProcessStats(LabProcess p)
    {
        var sb = new System.Text.StringBuilder($"# pid {p.Pid} {p.Comm}, vm {p.Space.Resolver.Name}\n");
        foreach (var kv in p.Space.Counters.Snapshot()) sb.Append(kv.Key).Append(' ').Append(kv.Value).Append('\n');
        sb.Append("fault_latency_us_p50 ").Append(p.Latency.QuantileMicros(0.5).ToString("0.0")).Append('\n');
        return sb.ToString();
    }

    static string DescribeObject(VmObject o)
    {
        var sb = new System.Text.StringBuilder();
        sb.Append("id ").Append(o.Id).Append('\n');
        sb.Append("kind ").Append(o.Kind == VmObjectKind.Vnode ? "vnode" : "anonymous").Append('\n');
        if (o.Vnode is VnodeAdapter v) sb.Append("file ").Append(v.Name).Append(" (ino ").Append(v.Ino).Append(")\n");
        sb.Append("size_pages ").Append(o.Size).Append('\n');
        sb.Append("resident_pages ").Append(o.ResidentCount).Append('\n');
        if (o.Vnode is VnodeAdapter d) sb.Append("dirty_pages ").Append(d.DirtyPages()).Append('\n');
        sb.Append("ref_count ").Append(o.RefCount).Append('\n');
        sb.Append("shadow_count ").Append(o.ShadowCount).Append('\n');
        sb.Append("backing_object ").Append(o.BackingObject?.Id.ToString() ?? "none").Append('\n');
        sb.Append("backing_object_offset ").Append(o.BackingObjectOffset).Append('\n');
        sb.Append("chain_depth ").Append(o.ChainDepth).Append('\n');
        return sb.ToString();
    }

    public string StatsText(ulong run)
    {
        var sb = new System.Text.StringBuilder(Registry.Render(run, _mountpoint));
        long resident = Registry.Live().Where(p => run == 0 || p.RunId == run).Sum(p => (long)p.Space.ResidentPages);
        sb.Append("resident_pages ").Append(resident).Append('\n');
        long limit = run == 0 ? Pageout.MountLimitPages : Pageout.LimitOf(run).Pages;
        sb.Append("resident_limit_pages ").Append(limit).Append('\n');
        var pool = run == 0 ? Pageout.Mount : Pageout.LimitOf(run);
        // The most pages the limited pool had wired (mlock) at once, and how often they alone exceeded its limit.
        sb.Append("resident_wired_max_pages ").Append(pool.WiredMax).Append('\n');
        sb.Append("resident_limit_below_wired ").Append(pool.WiredOverLimit).Append('\n');
        if (run == 0)
        {
            sb.Append("objects_alive ").Append(_vm.ObjectsAlive).Append('\n');
            sb.Append("anons_alive ").Append(_vm.AnonsAlive).Append('\n');
            sb.Append("swap_slots_in_use ").Append(_vm.SwapSlotsInUse).Append('\n');
            if (_swap != null)
            {
                var c = _swap.Store.Counters;
                sb.Append("swap_pages_written ").Append(Interlocked.Read(ref c.PagesWritten)).Append('\n');
                sb.Append("swap_pages_read ").Append(Interlocked.Read(ref c.PagesRead)).Append('\n');
                sb.Append("swap_transactions ").Append(Interlocked.Read(ref c.Transactions)).Append('\n');
                sb.Append("swap_store_bad_slots ").Append(Interlocked.Read(ref c.BadSlots)).Append('\n');
                // Now, not a sum: the slots holding a page, as `lab swap inspect` counts them.
                sb.Append("swap_slots_used ").Append(Interlocked.Read(ref c.SlotsUsed)).Append('\n');
            }
            // What the daemon holds, to see it return to its starting footprint when idle.
            var (nodes, caches, handles) = _fs?.Counts() ?? default;
            sb.Append("fs_nodes ").Append(nodes).Append('\n');
            sb.Append("fs_page_caches ").Append(caches).Append('\n');
            sb.Append("fs_open_handles ").Append(handles).Append('\n');
            sb.Append("vnodes_cached ").Append(_vnodes.Count()).Append('\n');
            sb.Append("runs_tracked ").Append(Registry.RunsTracked).Append('\n');
            sb.Append("run_limits ").Append(Pageout.RunLimits).Append('\n');
            if (_swap != null) sb.Append("swap_store_bytes ").Append(_swap.Store.FileBytes()).Append('\n');
            sb.Append("idle_trims ").Append(Interlocked.Read(ref _idleTrims)).Append('\n');
            // The `processes` count the last finished trim came after: equal to `processes` when
            // every program so far ended before a trim (what a wait for "idle and trimmed" asks).
            sb.Append("idle_trim_after_processes ").Append(Interlocked.Read(ref _processesAtLastTrimDone)).Append('\n');
            // The daemon's own memory, split: the managed heap (live objects, and what the GC keeps
            // committed) beside the process's RSS, so growth can be told apart from the GC's reserve.
            var gc = GC.GetGCMemoryInfo();
            sb.Append("daemon_managed_heap_bytes ").Append(gc.HeapSizeBytes).Append('\n');
            sb.Append("daemon_managed_committed_bytes ").Append(gc.TotalCommittedBytes).Append('\n');
            sb.Append("daemon_managed_fragmented_bytes ").Append(gc.FragmentedBytes).Append('\n');
            sb.Append("pageout_batches ").Append(Pageout.Batches).Append('\n');
            sb.Append("pageout_pages ").Append(Pageout.PagesBegun).Append('\n');
            sb.Append("pageout_swap_full ").Append(Pageout.SwapFullStops).Append('\n');
            sb.Append("pageout_shared_pages ").Append(Pageout.SharedPagesWritten).Append('\n');
            sb.Append("pageout_pinned_kept ").Append(Interlocked.Read(ref Pageout.PinnedKept)).Append('\n');
            sb.Append("pageout_changed_kept ").Append(Interlocked.Read(ref Pageout.ChangedKept)).Append('\n');
            sb.Append("pageout_locked_found ").Append(Interlocked.Read(ref Pageout.LockedFound)).Append('\n');
            sb.Append("pageout_scan_ms ").Append(Pageout.ScanTicks * 1000 / System.Diagnostics.Stopwatch.Frequency).Append('\n');
            sb.Append("pageout_commit_ms ").Append(Pageout.FlushTicks * 1000 / System.Diagnostics.Stopwatch.Frequency).Append('\n');
        }
        return sb.ToString();
    }

    /// <summary>Mount, serve until told to stop, then write back and unmount. Returns the exit code.</summary>
    public int Run(int fuseThreads, Action? ready)
    {
        Directory.CreateDirectory(SocketDirectory);
        RemoveDeadSockets();
        _control = new ControlServer(this, System.IO.Path.Combine(SocketDirectory, $"lab-{Environment.ProcessId}.sock"));
        _fs = new LabFileSystem(_backing, this);
        _fs.CachesInUse = () => Registry.LiveCount > 0;
        FuseServer.ClearStale(_mountpoint);
        _server = FuseServer.Mount(_mountpoint, _fs, new FuseMountOptions());
        _server.RefusalLog = line => Log.Error(line);   // malformed requests: logged, rate-limited
        // Failed operations: the first of each (operation, errno) in a minute in full, the rest summed.
        _server.FailureLog = (op, node, errno) =>
            Log.Keyed($"fuse {op} {errno}", $"fuse: {FuseServer.OpName(op)} on node {node} failed: {Errno.StrError(errno)} (errno {errno})");
        _control.Start();
        _execWatch = ExecWatch.TryStart(this, _control.Path);
        _server.Start(fuseThreads);
        Pageout.Start();
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; _stop.Set(); });
        using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; _stop.Set(); });
        using var hup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, c => { c.Cancel = true; _stop.Set(); });
        _server.Completion.ContinueWith(_ => _stop.Set());
        var idle = new Timer(_ => Guard(IdleTick, "idle trim"), null, 1000, 1000);
        ready?.Invoke();
        _stop.Wait();
        // A trim in progress finishes before the swap store closes.
        using (var stopped = new ManualResetEvent(false))
            if (idle.Dispose(stopped)) stopped.WaitOne(TimeSpan.FromSeconds(30));
        Shutdown();
        return 0;
    }

    public void RequestStop() => _stop.Set();

    // ---- idle: give back what the last busy spell left (the store's free pages, caches, heaps) ----

    /// <summary>No process for this long (LAB_IDLE_TRIM_MS; default 5 s) after some ran: trim once.</summary>
    static readonly long IdleTrimMs =
        long.TryParse(Environment.GetEnvironmentVariable("LAB_IDLE_TRIM_MS"), out long ms) && ms > 0 ? ms : 5000;
    long _idleSince = -1, _processesAtTrim, _idleTrims, _processesAtLastTrimDone;
    int _trimming;

    void IdleTick()
    {
        if (Registry.LiveCount > 0 || _shutdown != 0) { _idleSince = -1; return; }
        long now = Environment.TickCount64;
        if (_idleSince < 0) { _idleSince = now; return; }
        long seen = Registry.ProcessesEver;
        if (now - _idleSince < IdleTrimMs || seen == _processesAtTrim) return;
        if (Interlocked.Exchange(ref _trimming, 1) != 0) return;
        try
        {
            _processesAtTrim = seen;
            TrimIdle();
            Interlocked.Increment(ref _idleTrims);
            Interlocked.Exchange(ref _processesAtLastTrimDone, seen);
        }
        finally { Volatile.Write(ref _trimming, 0); }
    }

    /// <summary>
    /// With no program running: the swap store gives its free pages back and truncates its WAL,
    /// the clean pages of the lab's files are dropped, the vnode adapters of objects that are
    /// gone are forgotten, and the managed and C heaps return their free memory to the kernel.
    /// </summary>
    void TrimIdle()
    {
        // Each step on its own: one that fails is logged and the others still run.
        if (_swap is { } swap) Guard(() => { swap.Flush(); swap.Store.Trim(); }, "idle trim of the swap store");
        Guard(() => DropCaches(), "idle trim of the file caches");
        Guard(() => _fs?.DropForgotten(), "idle trim of forgotten files");
        // Every object is gone: drop the adapters (a file mapped again gets a new one).
        if (_vm.ObjectsAlive == 0 && Registry.LiveCount == 0) _vnodes.Clear();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        Native.MallocTrim(0);
    }

    /// <summary>A daemon killed with SIGKILL leaves its socket file behind: remove those whose pid is gone.</summary>
    static void RemoveDeadSockets()
    {
        foreach (var path in Directory.GetFiles(SocketDirectory, "lab-*.sock"))
        {
            var name = System.IO.Path.GetFileNameWithoutExtension(path);
            if (int.TryParse(name["lab-".Length..], out int pid) && !Directory.Exists($"/proc/{pid}"))
                try { System.IO.File.Delete(path); } catch (IOException) { }
        }
        // The temporary swap stores of killed daemons (swap-PID.db and its -wal, -shm, -lock).
        foreach (var path in Directory.GetFiles(SocketDirectory, "swap-*.db*"))
        {
            var name = System.IO.Path.GetFileName(path)["swap-".Length..];
            int dot = name.IndexOf('.');
            if (dot > 0 && int.TryParse(name[..dot], out int pid) && !Directory.Exists($"/proc/{pid}"))
                try { System.IO.File.Delete(path); } catch (IOException) { }
        }
    }

    /// <summary>Write back, unmount, then let go of the programs (their shims end them with a message).</summary>
    void Shutdown()
    {
        if (Interlocked.Exchange(ref _shutdown, 1) != 0) return;
        foreach (var p in Registry.Live()) Guard(() => p.MarkShared(0, UserTop), "write-back at unmount");
        try { _fs?.FlushAll(); } catch (Exception e) { Log.Error($"write-back at unmount: {e.Message}"); }
        _server?.Unmount();
        Pageout.Dispose();   // before the control connections (the agents') close
        _control?.Dispose();
        _execWatch?.Dispose();
        foreach (var p in Registry.Live()) ProcessGone(p);
        Guard(() => _swap?.Dispose(), "closing the swap store");
        if (_swapLock != null)
            Guard(() => { _swapLock.Dispose(); System.IO.File.Delete(_swapPath + "-lock"); }, "removing the swap store's lock");
        if (_removeSwapAtExit && _swapPath != null)
            foreach (var f in new[] { _swapPath, _swapPath + "-wal", _swapPath + "-shm" })
                Guard(() => System.IO.File.Delete(f), "removing the swap store");
        Log.Flush();
    }

    public LabProcess? NewProcess(Fd uffd, int pid, ulong run, string vm, string comm, out int errno)
    {
        errno = 0;
        IResolver resolver;
        try { resolver = Resolvers.Create(vm.Length == 0 ? _defaultVm : vm); }
        catch (ArgumentException) { errno = Errno.EINVAL; return null; }
        var pmap = new UffdPmap(uffd) { Pid = pid };
        var proc = new LabProcess(Registry, pid, run, comm, _vm.CreateSpace(pmap, resolver), pmap)
        {
            Limit = run == 0 ? null : Pageout.LimitOf(run), MountLimit = Pageout.Mount, Pageout = Pageout,
        };
        Registry.Add(proc);
        proc.Start();
        return proc;
    }

    /// <summary>
    /// Without ExecWatch (no process connector): a process's control connection ended. If the process is still there it exec'd (the
    /// socket is close-on-exec; an exit leaves a zombie, whose exe cannot be opened). A
    /// statically linked program never loads the shim: it runs outside the lab, so it is
    /// logged and counted for its run (`lab run` reports it and fails). A static program
    /// that ends within a moment of its exec can slip by unseen.
    /// </summary>
    public void CheckExec(LabProcess p)
    {
        if (_execWatch != null || p.Pid <= 0 || Lab.Linux.Elf.IsStatic($"/proc/{p.Pid}/exe") != true) return;
        string exe = "?";
        try { exe = new FileInfo($"/proc/{p.Pid}/exe").LinkTarget ?? "?"; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        NoteUnserved(p.Pid, exe, p.RunId);
    }

    /// <summary>A program of run `run` runs outside the lab (ExecWatch, CheckExec).</summary>
    public void NoteUnserved(int pid, string exe, ulong run)
    {
        Log.Info($"pid {pid} exec'd {exe}, which is statically linked: it runs outside the lab");
        Registry.NoteUnserved(run);
    }

    public void ProcessGone(LabProcess p)
    {
        if (!p.MarkGone()) { p.WaitTornDown(); return; }
        try { TearDown(p); }
        finally { p.TornDown(); }
        // Children from FORK events no LAB_FORK_DONE named (a fork outside the shim's wrapper) go
        // too; a named one may not have said hello yet (its parent forked and exited at once):
        // it stays claimable for a while.
        foreach (var c in p.TakeChildren())
        {
            if (c.ForkPid == 0) { ProcessGone(c); continue; }
            Registry.AddOrphan(c);
            _ = Task.Delay(TimeSpan.FromSeconds(30)).ContinueWith(_ => { if (Registry.RemoveOrphan(c)) ProcessGone(c); });
        }
    }

    void TearDown(LabProcess p)
    {
        p.Agent?.Detach();   // its pending evictions end here; no Finish after the pmap goes
        p.Stop();
        // Its shared pages may have been written: they reach the file, as Linux would write them back.
        Guard(() => { p.MarkShared(0, UserTop); p.FlushPending(); }, $"write-back for pid {p.Pid}");
        Guard(p.Space.Destroy, $"teardown of pid {p.Pid}");
        Registry.Retire(p);
        p.Pmap.Dispose();
    }

    /// <summary>The top of x86-64 user space: "the whole address space" as a range.</summary>
    public const ulong UserTop = 1UL << 47;

    /// <summary>Run a step of teardown; a failure is logged and the daemon goes on.</summary>
    static void Guard(Action step, string what)
    {
        try { step(); }
        catch (Exception e) { Log.Error($"{what}: {e.GetType().Name}: {e.Message}"); }
    }

    /// <summary>A parent reaped this child: every image of that pid is gone.</summary>
    public void Reaped(int pid)
    {
        foreach (var p in Registry.Live())
            if (p.Pid == pid) ProcessGone(p);
        // A child reaped before it said hello (killed at once) is never claimed.
        while (Registry.TakeUnclaimed(pid) is { } c) ProcessGone(c);
    }

    /// <summary>
    /// Drop the clean cached pages of every file the lab has mapped, except files some live
    /// program maps writable shared (their unflushed stores exist only in the cache).
    /// </summary>
    public long DropCaches()
    {
        var busy = new HashSet<IVnode>();
        foreach (var p in Registry.Live())
            foreach (var (vnode, _, _) in p.Space.SharedRanges(0, UserTop)) busy.Add(vnode);
        long dropped = 0;
        foreach (var (_, v) in _vnodes)
            if (!busy.Contains(v)) dropped += v.DropClean();
        return dropped;
    }

    public CachedFile? File(ulong ino) => _fs?.GetCachedFile(ino);

    /// <summary>The vnode of the file the caller holds open on the mount, whose st_ino is <paramref name="ino"/>.</summary>
    VnodeAdapter? Vnode(ulong ino)
    {
        var f = File(ino);
        return f == null ? null : _vnodes.GetValue(f, static x => new VnodeAdapter(x));
    }

    public static Prot ToProt(int prot) =>
        ((prot & 1) != 0 ? Prot.Read : 0) | ((prot & 2) != 0 ? Prot.Write : 0) | ((prot & 4) != 0 ? Prot.Exec : 0);

    public int Map(LabProcess p, ulong addr, ulong len, int prot, int kind, ulong ino, ulong offset)
    {
        if (len == 0 || (addr & 0xfff) != 0 || (len & 0xfff) != 0 || (offset & 0xfff) != 0) return Errno.EINVAL;
        switch (kind)
        {
            case Proto.MapAnon:
                p.Space.MapAnon(addr, len, ToProt(prot));
                return 0;
            case Proto.MapFilePrivate or Proto.MapFileShared:
                var v = Vnode(ino);
                if (v == null)
                {
                    Log.Error($"pid {p.Pid}: mmap of ino {ino} refused: no such regular file on the mount");
                    return Errno.ENOENT;
                }
                p.Space.MapFile(addr, len, ToProt(prot), v, (long)offset, kind == Proto.MapFileShared);
                return 0;
            default:
                return Errno.EINVAL;
        }
    }

    public int Msync(LabProcess p, ulong addr, ulong len)
    {
        p.MarkShared(addr, len);
        return p.FlushPending();
    }

    public int Unmap(LabProcess p, ulong addr, ulong len)
    {
        p.Barrier();                 // the kernel's UNMAP event, if any, is applied (and marked) first
        p.MarkShared(addr, len);
        p.Space.Unmap(addr, len);
        return p.FlushPending();
    }

    public void Dispose()
    {
        Shutdown();
        _stop.Dispose();
    }
}

/// <summary>What `lab mount` was asked for beyond the mount itself.</summary>
public sealed record DaemonOptions
{
    /// <summary>Resident limit for all the mount's programs together (bytes; 0 = none).</summary>
    public long MemoryBytes { get; init; }
    /// <summary>The swap store file; null = a fresh one in the socket directory, removed at exit; "none" = no swap.</summary>
    public string? SwapPath { get; init; }
    /// <summary>Most bytes the swap store may hold (0 = no limit).</summary>
    public long SwapMaxBytes { get; init; }
}

/// <summary>The VM core's view of a file: the lab file system's page cache for it.</summary>
public sealed class VnodeAdapter(CachedFile file) : IVnode
{
    // Pager failures: each faulting program gets SIGBUS; the daemon says why (Log rate-limits each line).
    int _holds; // holds this adapter's VM objects took on the cache

    public string Name => file.Name;

    public void ObjectCreated()
    {
        if (file.Hold()) Interlocked.Increment(ref _holds);
        else Log.Error($"file {Name} (ino {Ino}) was closed before the VM mapped it");
    }

    public void ObjectTerminated()
    {
        if (Interlocked.Decrement(ref _holds) >= 0) file.Release();
        else Interlocked.Increment(ref _holds); // its ObjectCreated took no hold
    }

    int Checked(int e, long pindex)
    {
        // ERANGE: the page is past EOF, SIGBUS as on Linux, not a failure of the lab.
        if (e != 0 && e != Errno.ERANGE)
            Log.Error($"pager: page {pindex} of {Name} (ino {Ino}): {Errno.StrError(e)}; the faulting program gets SIGBUS");
        return e;
    }

    public long DropClean() => file.DropClean();

    /// <summary>Dirty pages in the file's cache (for `.lab/objects/`; a scan, not for hot paths).</summary>
    public long DirtyPages()
    {
        long n = 0, pages = (file.Size + 4095) / 4096;
        for (long i = 0; i < pages; i++) if (file.IsDirty(i)) n++;
        return n;
    }

    public ulong Ino => file.Ino;
    public long Size => file.Size;
    public int ReadPages(long pindex, int count, Span<byte> dest) => Checked(file.ReadPages(pindex, count, dest), pindex);
    public int LoadPages(long pindex, int count) => Checked(file.LoadPages(pindex, count), pindex);
    public bool IsResident(long pindex) => file.IsResident(pindex);
    public void MarkDirty(long pindex, long count) => file.MarkDirty(pindex, count);
    public int Flush() => file.Flush();
}
