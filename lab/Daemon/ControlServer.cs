using System.Text;
using Lab.Linux;
using Lab.Vm;

namespace Lab.Daemon;

/// <summary>
/// The control socket: the shim's hand-off (HELLO with the uffd), its map requests, and
/// `lab stat`. One thread per connection; a connection is one process image. Only the
/// user who mounted (or root) may connect (SO_PEERCRED). A malformed message closes
/// that connection and nothing else.
/// </summary>
public sealed unsafe class ControlServer : IDisposable
{
    const ulong Features = Native.UFFD_FEATURE_PAGEFAULT_FLAG_WP | Native.UFFD_FEATURE_EVENT_FORK
        | Native.UFFD_FEATURE_EVENT_REMAP | Native.UFFD_FEATURE_EVENT_REMOVE | Native.UFFD_FEATURE_EVENT_UNMAP
        | Native.UFFD_FEATURE_MISSING_SHMEM | Native.UFFD_FEATURE_THREAD_ID | Native.UFFD_FEATURE_POISON
        | Native.UFFD_FEATURE_MOVE    // the shim's agent moves pages out to evict them (one REMOVE per batch)
        | Native.UFFD_FEATURE_MINOR_SHMEM    // shared file mappings fault on pages already in the memfd too
        | Native.UFFD_FEATURE_WP_HUGETLBFS_SHMEM;   // and a design can enter their pages read-only (UFFDIO_CONTINUE_MODE_WP)

    readonly LabDaemon _daemon;
    readonly string _path;
    readonly uint _ownerUid;
    Fd? _listenFd;
    Thread? _acceptThread;
    readonly List<ControlConnection> _conns = new();
    volatile bool _stopping;

    public ControlServer(LabDaemon daemon, string path)
    {
        _daemon = daemon; _path = path; _ownerUid = Native.GetUid();
    }

    public string Path => _path;

    public void Start()
    {
        try { File.Delete(_path); } catch (IOException) { }
        _listenFd = Native.Socket(Native.AF_UNIX, Native.SOCK_STREAM | Native.SOCK_CLOEXEC, 0);
        Span<byte> addr = stackalloc byte[110];
        if (_listenFd.IsInvalid || !Native.SockAddr(_path, addr, out uint len))
            throw new LabException($"cannot create the control socket {_path}");
        fixed (byte* a = addr)
            if (Native.Bind(_listenFd, a, len) != 0 || Native.Listen(_listenFd, 128) != 0)
                throw new LabException($"cannot listen on {_path}: {Errno.StrError(Errno.Last)}");
        File.SetUnixFileMode(_path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead
            | UnixFileMode.GroupWrite | UnixFileMode.OtherRead | UnixFileMode.OtherWrite);  // SO_PEERCRED decides
        _acceptThread = new Thread(AcceptLoop) { IsBackground = true, Name = "control accept" };
        _acceptThread.Start();
    }

    void AcceptLoop()
    {
        try { AcceptConnections(); }
        catch (Exception e) { Log.Error($"control socket: {e.GetType().Name}: {e.Message}"); }
    }

    void AcceptConnections()
    {
        while (!_stopping)
        {
            var fd = Native.Accept4(_listenFd!, null, null, Native.SOCK_CLOEXEC);
            if (fd.IsInvalid)
            {
                if (_stopping) return;
                if (Errno.Last == Errno.EINTR) continue;
                Thread.Sleep(10);
                continue;
            }
            var conn = new ControlConnection(fd);
            var cred = conn.PeerCred();
            if (cred.Uid != 0 && cred.Uid != _ownerUid)
            {
                Log.Info($"refused a control connection from uid {cred.Uid} (pid {cred.Pid})");
                conn.Dispose();
                continue;
            }
            lock (_conns) _conns.Add(conn);
            new Thread(() => Serve(conn, cred.Pid)) { IsBackground = true, Name = $"control {cred.Pid}" }.Start();
        }
    }

    void Serve(ControlConnection conn, int peerPid)
    {
        LabProcess? proc = null;
        try
        {
            while (!_stopping)
            {
                var m = conn.Receive();
                if (m is not Message msg) break;
                try
                {
                    if (!Handle(conn, msg, ref proc, peerPid)) break;
                }
                finally
                {
                    if (msg.Type != Proto.Hello) msg.Fd?.Dispose();
                }
            }
        }
        catch (Exception e)
        {
            Log.Error($"control connection of pid {peerPid}: {e.GetType().Name}: {e.Message}");
        }
        finally
        {
            lock (_conns) _conns.Remove(conn);
            conn.Dispose();
            try { if (proc != null) _daemon.CheckExec(proc); }
            catch (Exception e) { Log.Error($"exec check of pid {peerPid}: {e.GetType().Name}: {e.Message}"); }
            try { if (proc != null) _daemon.ProcessGone(proc); }
            catch (Exception e) { Log.Error($"teardown of pid {peerPid}: {e.GetType().Name}: {e.Message}"); }
        }
    }

    /// <summary>Handle one message; false closes the connection.</summary>
    bool Handle(ControlConnection conn, Message m, ref LabProcess? proc, int peerPid)
    {
        var p = conn.Payload(m);
        switch (m.Type)
        {
            case Proto.Hello when proc == null && Proto.TryRead(p, out LabHello h):
            {
                if (!VersionOk(conn, m, h, peerPid)) { m.Fd?.Dispose(); return false; }
                int pid = h.Pid;
                if (m.Fd == null) return Reply(conn, m, Errno.EINVAL);
                if (pid != peerPid) { m.Fd.Dispose(); return Reply(conn, m, Errno.EINVAL) && false; }
                int err = UffdPmap.Api(m.Fd, Features, out ulong got);
                if (err != 0) { m.Fd.Dispose(); Reply(conn, m, err); return false; }
                proc = _daemon.NewProcess(m.Fd, pid, h.RunId, h.VmName(), h.CommName(), out err);
                if (proc == null) { Reply(conn, m, err); return false; }
                var r = new LabHelloReply { Features = got };
                return conn.Send(m.Type | Proto.Reply, m.Seq, 0, in r);
            }
            case Proto.ChildHello when proc == null && Proto.TryRead(p, out LabHello h):
            {
                if (!VersionOk(conn, m, h, peerPid)) return false;
                int pid = h.Pid;
                if (pid != peerPid) return Reply(conn, m, Errno.EINVAL) && false;
                var child = _daemon.Registry.ClaimForked(pid, TimeSpan.FromSeconds(10));
                if (child == null) { Reply(conn, m, Errno.ESRCH); return false; }
                child.Pid = pid;
                child.Pmap.Pid = pid;
                proc = child;
                return conn.Send(m.Type | Proto.Reply, m.Seq, 0, ReadOnlySpan<byte>.Empty, child.Pmap.Uffd);
            }
            case Proto.AgentHello when proc == null && Proto.TryRead(p, out LabAgentHello ah):
            {
                // The shim's agent thread: from now on this connection carries our LAB_EVICT requests.
                int pid = ah.Pid;
                if (pid != peerPid) return Reply(conn, m, Errno.EINVAL) && false;
                var target = _daemon.Registry.Live().LastOrDefault(x => x.Pid == pid && x.Agent == null);
                if (target == null) { Reply(conn, m, Errno.ESRCH); return false; }
                var agent = new EvictAgent(conn, target, _daemon.Pageout, ah.Scratch, ah.ScratchLen);
                if (!Reply(conn, m, 0)) return false;
                target.Agent = agent;
                agent.ReadReplies();
                return false;
            }
            case Proto.SetLimit when proc == null && Proto.TryRead(p, out LabSetLimit sl):
                _daemon.Pageout.SetRunLimit(sl.RunId, (long)Math.Min(sl.Bytes, long.MaxValue / 2));
                return Reply(conn, m, 0);
            case Proto.Stat when Proto.TryRead(p, out LabStat st):
                return conn.Send(m.Type | Proto.Reply, m.Seq, 0, Encoding.UTF8.GetBytes(_daemon.StatsText(st.RunId)));
            case Proto.DropCaches when proc == null:
            {
                ulong dropped = (ulong)_daemon.DropCaches();
                return conn.Send(m.Type | Proto.Reply, m.Seq, 0, in dropped);
            }
            case Proto.Map when proc != null && Proto.TryRead(p, out LabMap mp):
                proc.Barrier();   // an event read before this request (the unmap that freed the range) applies first
                return Reply(conn, m, _daemon.Map(proc, mp.Addr, mp.Len, mp.Prot, mp.Kind, mp.Ino, mp.Offset));
            case Proto.OpenShared when proc != null && Proto.TryRead(p, out LabOpenShared os):
            {
                var file = _daemon.File(os.Ino);
                if (file == null) return Reply(conn, m, Errno.ENOENT);
                var r = new LabOpenSharedReply { Size = (ulong)file.Size };
                return conn.Send(m.Type | Proto.Reply, m.Seq, 0, in r, file.MemfdFd);
            }
            case Proto.Unmap when proc != null && Proto.TryRead(p, out LabRange rg):
                return Reply(conn, m, _daemon.Unmap(proc, rg.Addr, rg.Len));
            case Proto.Release when proc != null && Proto.TryRead(p, out LabRange rg):
            {
                ulong addr = rg.Addr, len = rg.Len;
                if (!UserRange(addr, len))
                {
                    Log.Info($"pid {peerPid}: refused a release of {addr:x}+{len:x}: not a page-aligned user range");
                    return Reply(conn, m, Errno.EINVAL);
                }
                int err = proc.Release(addr, len);
                int flushed = proc.FlushPending();
                return Reply(conn, m, err != 0 ? err : flushed);
            }
            case Proto.Msync when proc != null && Proto.TryRead(p, out LabRange rg):
                return Reply(conn, m, _daemon.Msync(proc, rg.Addr, rg.Len));
            case Proto.Protect when proc != null && Proto.TryRead(p, out LabRange rg):
                proc.Barrier();
                proc.Space.Protect(rg.Addr, rg.Len, LabDaemon.ToProt(rg.Prot));
                return Reply(conn, m, 0);
            case Proto.Wire when proc != null && Proto.TryRead(p, out LabRange rg):
                // mlock (before the real call) or munlock (after it): a locked page is never one
                // the pageout may pick. A lock that populates is the design's wiring (every page
                // a wiring fault, counted as the seed counts it), so the kernel's populate finds
                // the pages present and faults none of them again; MLOCK_ONFAULT only marks.
                if (!UserRange(rg.Addr, rg.Len))
                {
                    Log.Info($"pid {peerPid}: refused a wire of {rg.Addr:x}+{rg.Len:x}: not a page-aligned user range");
                    return Reply(conn, m, Errno.EINVAL);
                }
                proc.Barrier();
                if ((rg.Flags & Proto.WireOn) == 0) proc.Space.Unwire(rg.Addr, rg.Len);
                else if ((rg.Flags & Proto.WireFault) != 0) proc.Space.Wire(rg.Addr, rg.Len);
                else proc.Space.MarkWired(rg.Addr, rg.Len);
                _daemon.Pageout.Kick();
                return Reply(conn, m, 0);
            case Proto.ForkPrepare when proc != null:
                proc.Barrier();
                proc.Space.ForkProtect();
                return Reply(conn, m, 0);
            case Proto.ForkDone when proc != null:
                // Names the child of this fork (its uffd came in the FORK event, without a pid).
                if (Proto.TryRead(p, out LabForkDone fd) && fd.ChildPid > 0) proc.ForkDone(fd.ChildPid);
                return Reply(conn, m, 0);
            case Proto.Reaped when proc != null && Proto.TryRead(p, out LabReaped rp):
                _daemon.Reaped(rp.Pid);
                return Reply(conn, m, 0);
            case Proto.Outside when proc != null && Proto.TryRead(p, out LabOutside ou):
                // The image's last word on its memory outside the lab: a later report (the exit
                // after a failed exec) replaces an earlier one.
                proc.Outside = OutsidePages.From(in ou);
                return Reply(conn, m, 0);
            case Proto.Remap when proc != null && Proto.TryRead(p, out LabRemap rm):
                proc.Barrier();   // a move arrives as a uffd REMAP event: applied before we grow
                proc.ExpectDontUnmap(0, 0);
                proc.Space.Grow(rm.NewAddr, rm.OldLen, rm.NewLen);
                return Reply(conn, m, 0);
            case Proto.RemapPrepare when proc != null && Proto.TryRead(p, out LabRemap rm):
                // Before an mremap(MREMAP_DONTUNMAP): its REMAP event keeps the old range (flags 0: it failed).
                if ((rm.Flags & Proto.MremapDontUnmap) != 0) proc.ExpectDontUnmap(rm.OldAddr, rm.OldLen);
                else proc.ExpectDontUnmap(0, 0);
                return Reply(conn, m, 0);
            case Proto.Advise when proc != null && Proto.TryRead(p, out LabRange rg):
            {
                int advice = rg.Flags;
                if (!UserRange(rg.Addr, rg.Len))
                {
                    Log.Info($"pid {peerPid}: refused advice {advice} on {rg.Addr:x}+{rg.Len:x}: not a page-aligned user range");
                    return Reply(conn, m, Errno.EINVAL);
                }
                proc.Barrier();
                switch (advice)
                {
                    case Proto.MadvWipeOnFork or Proto.MadvKeepOnFork:
                        proc.Space.SetWipeOnFork(rg.Addr, rg.Len, advice == Proto.MadvWipeOnFork);
                        return Reply(conn, m, 0);
                    case Proto.MadvDontFork or Proto.MadvDoFork:
                        proc.Space.SetDontFork(rg.Addr, rg.Len, advice == Proto.MadvDontFork);
                        return Reply(conn, m, 0);
                    case Proto.MadvNormal or Proto.MadvRandom or Proto.MadvSequential:
                        // The access pattern each design sizes its fault window by (UVM's
                        // uvmadvice[], the Mach pager's read-behind/ahead and sequential tests).
                        proc.Space.Advise(rg.Addr, rg.Len,
                            advice == Proto.MadvRandom ? Advice.Random : advice == Proto.MadvSequential ? Advice.Sequential : Advice.Normal);
                        return Reply(conn, m, 0);
                    case Proto.MadvWillNeed:
                        // FreeBSD and DragonFly map the range's resident pages; UVM does nothing.
                        proc.Space.WillNeed(rg.Addr, rg.Len);
                        return Reply(conn, m, 0);
                    default:
                        Log.Info($"pid {proc.Pid}: LAB_ADVISE with advice {advice} refused");
                        return Reply(conn, m, Errno.EINVAL);
                }
            }
            default:
                Log.Info($"closing the control connection of pid {peerPid}: malformed message (type {m.Type}, {m.Length} bytes)");
                return false;
        }
    }

    /// <summary>
    /// A HELLO from a shim of another protocol version is refused with EPROTONOSUPPORT (the shim
    /// then stops its program with one line) and logged here once; its other fields are not trusted.
    /// </summary>
    static bool VersionOk(ControlConnection conn, Message m, LabHello h, int peerPid)
    {
        if (h.Version == Proto.Version) return true;
        Log.Info($"refused pid {peerPid} ({h.CommName()}): its shim speaks control protocol version {h.Version}, "
            + $"this daemon {Proto.Version} (a liblabpreload.so from another build of the lab)");
        conn.Send(m.Type | Proto.Reply, m.Seq, Proto.EProtoNoSupport, ReadOnlySpan<byte>.Empty);
        return false;
    }

    /// <summary>A non-empty, page-aligned range of user addresses.</summary>
    static bool UserRange(ulong addr, ulong len) =>
        len != 0 && ((addr | len) & 0xfff) == 0 && addr + len >= addr && addr + len <= LabDaemon.UserTop;

    static bool Reply(ControlConnection conn, Message m, int status)
    {
        // A refused request is logged (rate-limited): the program sees only an errno.
        if (status != 0) Log.Info($"refused a control request (type {m.Type}, seq {m.Seq}): {Errno.StrError(status)}");
        return conn.Send(m.Type | Proto.Reply, m.Seq, status, ReadOnlySpan<byte>.Empty);
    }

    public void Dispose()
    {
        _stopping = true;
        if (_listenFd != null) { Native.Shutdown(_listenFd, 2); _listenFd.Dispose(); }
        _acceptThread?.Join(TimeSpan.FromSeconds(2));
        lock (_conns) foreach (var c in _conns) c.Shutdown();
        try { File.Delete(_path); } catch (IOException) { }
    }
}

public sealed class LabException(string message) : Exception(message);
