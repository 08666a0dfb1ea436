using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Lab.Fusefs;
using Lab.Linux;
using Lab.Vm;

namespace Lab.Daemon;

/// <summary>
/// The lab daemon: one FUSE mount, one VM, one control socket. `lab mount` starts it;
/// SIGINT, SIGTERM or `lab unmount` end it, after dirty pages are written back.
/// </summary>
public sealed class LabDaemon : ILabDirectory, IDisposable
{
    public readonly Registry Registry;
    readonly Lab.Vm.Vm _vm = new();
    readonly string _backing, _mountpoint, _defaultVm;
    readonly ConcurrentDictionary<ulong, VnodeAdapter> _vnodes = new();
    LabFileSystem? _fs;
    FuseServer? _server;
    ControlServer? _control;
    readonly ManualResetEventSlim _stop = new();
    int _shutdown;

    public LabDaemon(string backing, string mountpoint, string defaultVm)
    {
        _backing = backing; _mountpoint = mountpoint; _defaultVm = defaultVm;
        Registry = new Registry(defaultVm);
    }

    public static string SocketDirectory =>
        Native.getuid() == 0 ? "/run/lab" : System.IO.Path.Combine(Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") ?? "/tmp", "lab");

    // ILabDirectory: `.lab/` in the mount.
    public string ControlSocketPath => _control?.Path ?? "";
    public IReadOnlyList<string> FileNames { get; } = new[] { "stats" };
    public byte[] Render(string name) => name == "stats" ? System.Text.Encoding.UTF8.GetBytes(StatsText(0)) : Array.Empty<byte>();

    public string StatsText(ulong run) => Registry.Render(run, _mountpoint);

    /// <summary>Mount, serve until told to stop, then write back and unmount. Returns the exit code.</summary>
    public int Run(int fuseThreads, Action? ready)
    {
        Directory.CreateDirectory(SocketDirectory);
        _control = new ControlServer(this, System.IO.Path.Combine(SocketDirectory, $"lab-{Environment.ProcessId}.sock"));
        _fs = new LabFileSystem(_backing, this);
        FuseServer.ClearStale(_mountpoint);
        _server = FuseServer.Mount(_mountpoint, _fs, new FuseMountOptions());
        _control.Start();
        _server.Start(fuseThreads);
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; _stop.Set(); });
        using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; _stop.Set(); });
        using var hup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, c => { c.Cancel = true; _stop.Set(); });
        _server.Completion.ContinueWith(_ => _stop.Set());
        ready?.Invoke();
        _stop.Wait();
        Shutdown();
        return 0;
    }

    public void RequestStop() => _stop.Set();

    /// <summary>Write back, unmount, then let go of the programs (their shims end them with a message).</summary>
    void Shutdown()
    {
        if (Interlocked.Exchange(ref _shutdown, 1) != 0) return;
        foreach (var p in Registry.Live()) Guard(() => p.MarkShared(0, UserTop), "write-back at unmount");
        try { _fs?.FlushAll(); } catch (Exception e) { Log.Error($"write-back at unmount: {e.Message}"); }
        _server?.Unmount();
        _control?.Dispose();
        foreach (var p in Registry.Live()) ProcessGone(p);
    }

    public LabProcess? NewProcess(int uffd, int pid, ulong run, string vm, string comm, out int errno)
    {
        errno = 0;
        IResolver resolver;
        try { resolver = Resolvers.Create(vm.Length == 0 ? _defaultVm : vm); }
        catch (ArgumentException) { errno = Native.EINVAL; return null; }
        var pmap = new UffdPmap(uffd);
        var proc = new LabProcess(Registry, pid, run, comm, _vm.CreateSpace(pmap, resolver), pmap);
        Registry.Add(proc);
        proc.Start();
        return proc;
    }

    public void ProcessGone(LabProcess p)
    {
        if (!p.MarkGone()) { p.WaitTornDown(); return; }
        try { TearDown(p); }
        finally { p.TornDown(); }
        // Children from FORK events that never connected (a fork outside the shim's wrapper) go too.
        while (p.ClaimChild(TimeSpan.Zero) is { } orphan) ProcessGone(orphan);
    }

    void TearDown(LabProcess p)
    {
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
    }

    public CachedFile? File(ulong ino) => _fs?.GetCachedFile(ino);

    VnodeAdapter? Vnode(ulong ino)
    {
        if (_vnodes.TryGetValue(ino, out var v)) return v;
        var f = File(ino);
        return f == null ? null : _vnodes.GetOrAdd(ino, _ => new VnodeAdapter(f));
    }

    public static Prot ToProt(int prot) =>
        ((prot & 1) != 0 ? Prot.Read : 0) | ((prot & 2) != 0 ? Prot.Write : 0) | ((prot & 4) != 0 ? Prot.Exec : 0);

    public int Map(LabProcess p, ulong addr, ulong len, int prot, int kind, ulong ino, ulong offset)
    {
        if (len == 0 || (addr & 0xfff) != 0 || (len & 0xfff) != 0 || (offset & 0xfff) != 0) return Native.EINVAL;
        switch (kind)
        {
            case Proto.MapAnon:
                p.Space.MapAnon(addr, len, ToProt(prot));
                return 0;
            case Proto.MapFilePrivate or Proto.MapFileShared:
                var v = Vnode(ino);
                if (v == null) return Native.ENOENT;
                p.Space.MapFile(addr, len, ToProt(prot), v, (long)offset, kind == Proto.MapFileShared);
                return 0;
            default:
                return Native.EINVAL;
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

/// <summary>The VM core's view of a file: the lab file system's page cache for it.</summary>
public sealed class VnodeAdapter(CachedFile file) : IVnode
{
    public ulong Ino => file.Ino;
    public long Size => file.Size;
    public int ReadPages(long pindex, int count, Span<byte> dest) => file.ReadPages(pindex, count, dest);
    public int LoadPages(long pindex, int count) => file.LoadPages(pindex, count);
    public bool IsResident(long pindex) => file.IsResident(pindex);
    public void MarkDirty(long pindex, long count) => file.MarkDirty(pindex, count);
    public int Flush() => file.Flush();
}
