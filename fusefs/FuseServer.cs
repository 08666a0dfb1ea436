using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Lab.Fusefs;

/// <summary>
/// One FUSE session on /dev/fuse: mount(2), INIT negotiation, a pool of request threads (each with
/// its own cloned device fd and its own native request/reply buffers), and unmount.
/// </summary>
public sealed unsafe class FuseServer : IDisposable, IFuseNotifier
{
    private const int ReqBufSize = FuseConst.MaxWrite + 4096;
    private const int ReplyBufSize = FuseConst.MaxWrite + 4096;

    private readonly IFuseFileSystem _fs;
    private readonly object _gate = new();
    private readonly List<Fd> _fds = new();
    private readonly List<Thread> _threads = new();
    private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Fd? _devFd;   // null once the session closed the device
    private Fd? _stopFd;  // disposed, never reset, at unmount: a late poll then ignores it (-1)
    private bool _mounted, _started, _unmounted;
    private int _running;
    private int _destroyed;
    private bool _viaFusermount;
    private bool _defaultPermissions;
    private readonly FuseNotifications _notifications;

    public string MountPoint { get; }
    /// <summary>Protocol minor the kernel offered, and the one we answered with.</summary>
    public uint KernelMinor { get; private set; }
    public uint Minor { get; private set; }
    /// <summary>Completes when every request thread has ended (unmounted, or aborted).</summary>
    public Task Completion => _done.Task;

    private FuseServer(string mountPoint, IFuseFileSystem fs, Fd devFd)
    {
        MountPoint = mountPoint;
        _fs = fs;
        _devFd = devFd;
        _notifications = new FuseNotifications(() => _devFd);
    }

    /// <summary>Mounts an empty session at <paramref name="mountpoint"/>; call <see cref="Start"/> to serve it.
    /// As root (or with <see cref="FuseMountMethod.Syscall"/>) by mount(2); otherwise through the setuid
    /// helper fusermount3, which opens /dev/fuse, mounts, and hands the device fd back over a socket.</summary>
    public static FuseServer Mount(string mountpoint, IFuseFileSystem fs, FuseMountOptions? opts = null)
    {
        ArgumentNullException.ThrowIfNull(fs);
        var dev = FuseMounter.Mount(mountpoint, opts ?? new FuseMountOptions(), out string mp, out bool viaFusermount);
        var server = new FuseServer(mp, fs, dev)
        {
            _mounted = true, _viaFusermount = viaFusermount,
            _defaultPermissions = (opts ?? new FuseMountOptions()).DefaultPermissions,
        };
        server._fds.Add(dev);
        fs.Attach(server);
        return server;
    }

    /// <summary>FUSE_POSIX_ACL: the kernel checks ACLs (read through GETXATTR system.posix_acl_access) with
    /// the mode. Only on a default_permissions mount: the flag turns default_permissions on in the kernel,
    /// which a mount that asked the server to check permissions must not get behind its back.</summary>
    private bool PosixAcl => _defaultPermissions && _fs.SupportsPosixAcl;

    /// <summary>Whether the kernel enforces POSIX ACLs on this session (FUSE_POSIX_ACL was agreed).</summary>
    public bool AclsEnforced { get; private set; }

    /// <summary>Whether the mount was made by fusermount3 (and is undone by it when we are not root).</summary>
    public bool ViaFusermount => _viaFusermount;

    /// <summary>
    /// If <paramref name="mountpoint"/> is a FUSE mount whose server is gone ("Transport endpoint is not
    /// connected"), detaches it and returns true; otherwise false. The probe (stat, then statfs for a
    /// listed FUSE mount) goes to the server, so on a live but hung server it waits like any caller.
    /// </summary>
    public static bool ClearStale(string mountpoint) => FuseMounter.ClearStale(mountpoint);

    /// <summary>Answers INIT, then serves requests on <paramref name="threads"/> threads.</summary>
    public void Start(int threads = 4)
    {
        if (threads < 1) throw new ArgumentOutOfRangeException(nameof(threads));
        lock (_gate)
        {
            if (_started || _unmounted) throw new InvalidOperationException("already started or unmounted");
            _started = true;
            Negotiate();
            _stopFd = Native.EventFd(0, Native.EFD_CLOEXEC | Native.EFD_NONBLOCK);
            if (_stopFd.IsInvalid) throw new IOException($"eventfd: {Errno.StrError(Errno.Last)}");
            _running = threads;
            _notifications.Start(Minor);
            for (int i = 0; i < threads; i++)
            {
                var fd = i == 0 ? _devFd! : CloneDevFd();
                if (fd != _devFd) _fds.Add(fd);
                var t = new Thread(() => Loop(fd)) { IsBackground = true, Name = $"fuse-{i}" };
                _threads.Add(t);
                t.Start();
            }
        }
    }

    // A cloned fd has its own request queue reader, so threads do not contend on one file.
    private Fd CloneDevFd()
    {
        var fd = Native.Open("/dev/fuse", Native.O_RDWR | Native.O_CLOEXEC | Native.O_NONBLOCK, 0);
        if (fd.IsInvalid) return _devFd!;
        uint master = (uint)_devFd!.Number;
        if (Native.Ioctl(fd, Native.FUSE_DEV_IOC_CLONE, &master) != 0)
        {
            fd.Dispose();
            return _devFd;
        }
        return fd;
    }

    private void Negotiate()
    {
        byte* req = (byte*)NativeMemory.AlignedAlloc(ReqBufSize, 4096);
        try
        {
            var deadline = Environment.TickCount64 + 10_000;
            while (true)
            {
                nint n = Native.Read(_devFd!, req, ReqBufSize);
                if (n < 0)
                {
                    int e = Errno.Last;
                    if (e == Errno.EINTR) continue;
                    if (e == Errno.EAGAIN && Environment.TickCount64 < deadline)
                    {
                        using (var dev = _devFd!.Use())
                        {
                            Native.PollFd p = new() { Fd = dev.Number, Events = Native.POLLIN };
                            Native.Poll(&p, 1, 1000);
                        }
                        continue;
                    }
                    throw new IOException($"FUSE INIT not received: {Errno.StrError(e)}");
                }
                var span = new ReadOnlySpan<byte>(req, (int)n);
                var h = MemoryMarshal.Read<FuseInHeader>(span);
                if (h.Opcode != (uint)FuseOpcode.Init || n < FuseConst.InHeaderSize + 16)
                    throw new IOException($"expected FUSE INIT, got opcode {h.Opcode}");
                var init = MemoryMarshal.Read<FuseInitIn>(span[FuseConst.InHeaderSize..]);
                if (init.Major != FuseConst.KernelVersion)
                    throw new IOException($"kernel FUSE protocol {init.Major}.{init.Minor} is not supported");
                KernelMinor = init.Minor;
                Minor = Math.Min(init.Minor, FuseConst.HighestMinor);
                uint flags2 = (init.Flags & FuseConst.InitExt) != 0 ? init.Flags2 : 0;
                var o = new FuseInitOut
                {
                    Major = FuseConst.KernelVersion,
                    Minor = Minor,
                    MaxReadahead = init.MaxReadahead,
                    Flags = init.Flags & (FuseConst.AsyncRead | FuseConst.BigWrites | FuseConst.ParallelDirops
                                          | FuseConst.MaxPagesFlag | FuseConst.InitExt
                                          | (_fs.SupportsReadDirPlus ? FuseConst.DoReaddirplus | FuseConst.ReaddirplusAuto : 0)
                                          | (PosixAcl ? FuseConst.PosixAcl : 0) | FuseConst.DontMask
                                          | (_fs.HandlesKillPriv ? FuseConst.HandleKillprivV2 : 0)),
                    Flags2 = flags2 & FuseConst.DirectIoAllowMmap2,
                    MaxBackground = 64,
                    CongestionThreshold = 48,
                    MaxWrite = FuseConst.MaxWrite,
                    TimeGran = 1,
                    MaxPages = FuseConst.MaxPages,
                };
                AclsEnforced = (o.Flags & FuseConst.PosixAcl) != 0;
                byte* reply = stackalloc byte[FuseConst.OutHeaderSize + sizeof(FuseInitOut)];
                var rs = new Span<byte>(reply, FuseConst.OutHeaderSize + sizeof(FuseInitOut));
                MemoryMarshal.Write(rs[FuseConst.OutHeaderSize..], in o);
                FuseReply.Header(rs, rs.Length, 0, h.Unique);
                if (Native.Write(_devFd!, reply, (nuint)rs.Length) < 0)
                    throw new IOException($"FUSE INIT reply failed: {Errno.StrError(Errno.Last)}");
                return;
            }
        }
        finally { NativeMemory.AlignedFree(req); }
    }

    private void Loop(Fd fd)
    {
        byte* req = (byte*)NativeMemory.AlignedAlloc(ReqBufSize, 4096);
        byte* reply = (byte*)NativeMemory.AlignedAlloc(ReplyBufSize, 4096);
        try
        {
            var pfd = stackalloc Native.PollFd[2];
            while (true)
            {
                nint n = Native.Read(fd, req, ReqBufSize);
                if (n < 0)
                {
                    int e = Errno.Last;
                    if (e == Errno.EINTR || e == Errno.ENOENT) continue;
                    if (e != Errno.EAGAIN) break; // ENODEV: unmounted; anything else: the session is unusable
                    int rc;
                    using (var dev = fd.Use())
                    using (var stop = _stopFd!.Use())
                    {
                        pfd[0] = new Native.PollFd { Fd = dev.Number, Events = Native.POLLIN };
                        pfd[1] = new Native.PollFd { Fd = stop.Number, Events = Native.POLLIN };
                        rc = Native.Poll(pfd, 2, -1);
                    }
                    if (rc < 0 && Errno.Last != Errno.EINTR) break;
                    if (pfd[1].Revents != 0) break;
                    continue;
                }
                int len = Dispatch(new ReadOnlySpan<byte>(req, (int)n), new Span<byte>(reply, ReplyBufSize));
                if (len > 0)
                    Native.Write(fd, reply, (nuint)len); // ENOENT: the request was interrupted meanwhile
            }
        }
        finally
        {
            NativeMemory.AlignedFree(req);
            NativeMemory.AlignedFree(reply);
            if (Interlocked.Decrement(ref _running) == 0) Finish();
        }
    }

    private void Finish()
    {
        if (Interlocked.Exchange(ref _destroyed, 1) == 0)
        {
            try { _fs.Destroy(); }
            catch (Exception) { /* a failing flush must not keep the session alive */ }
        }
        _done.TrySetResult();
    }

    /// <summary>Detaches the mount, stops the threads and closes the device. Idempotent.</summary>
    public void Unmount()
    {
        lock (_gate)
        {
            if (_unmounted) return;
            _unmounted = true;
        }
        if (_mounted) FuseMounter.Unmount(MountPoint, _viaFusermount);
        _notifications.Stop();
        if (_started)
        {
            // With nothing open on it the super block dies now and the threads read ENODEV; if some
            // process still holds files there, stop anyway: closing the device aborts the connection.
            if (!Completion.Wait(2000) && _stopFd != null)
            {
                ulong one = 1;
                Native.Write(_stopFd, (byte*)&one, 8);
            }
            foreach (var t in _threads) t.Join(5000);
        }
        foreach (var fd in _fds) fd.Dispose();
        _fds.Clear();
        _devFd = null;
        _stopFd?.Dispose();
        if (!_started) Finish();
    }

    /// <summary>Same as <see cref="Unmount"/>; the file system object stays the caller's to dispose.</summary>
    public void Dispose() => Unmount();

    // ---------------- notifications (FuseNotifications) ----------------

    public bool InvalidateInode(ulong node, long offset, long length) => _notifications.InvalidateInode(node, offset, length);
    public bool InvalidateEntry(ulong parent, ReadOnlySpan<byte> name) => _notifications.InvalidateEntry(parent, name);
    /// <summary>Notifications written to the kernel so far (including those it answered ENOENT: not cached).</summary>
    public long NotificationsSent => _notifications.Sent;
    /// <summary>Waits until every queued notification has been written; false on timeout.</summary>
    public bool WaitNotifications(int timeoutMs) => _notifications.Wait(timeoutMs);

    /// <summary>Test hook: closes the device without unmounting, leaving a dead mount behind.</summary>
    internal void AbandonForTest()
    {
        lock (_gate)
        {
            if (_started) throw new InvalidOperationException("abandon only a session that was not started");
            _unmounted = true;
        }
        foreach (var fd in _fds) fd.Dispose();
        _fds.Clear();
        _devFd = null;
        Finish();
    }

    /// <summary>Test hook: dispatches one raw request and returns the reply bytes (empty: no reply).</summary>
    internal byte[] DispatchForTest(ReadOnlySpan<byte> request)
    {
        byte* reply = (byte*)NativeMemory.AlignedAlloc(ReplyBufSize, 4096);
        try
        {
            int len = Dispatch(request, new Span<byte>(reply, ReplyBufSize));
            return new ReadOnlySpan<byte>(reply, len).ToArray();
        }
        finally { NativeMemory.AlignedFree(reply); }
    }

    /// <summary>Called with one line for each malformed request refused (opcode name, unique id, why);
    /// null: refused quietly. The reply is the same either way.</summary>
    public Action<string>? RefusalLog { get; set; }

    /// <summary>Called for each request answered with an error the caller did not simply ask about
    /// (opcode, node, errno); see <see cref="IsAnAnswer"/>. Null: not reported. Runs on the request's
    /// thread, only on the error path.</summary>
    public Action<uint, ulong, int>? FailureLog { get; set; }

    /// <summary>The name linux/fuse.h gives an opcode (LOOKUP, MKNOD...), for logs.</summary>
    public static string OpName(uint opcode) => FuseOps.NameOf(opcode);

    /// <summary>Errors that answer a question rather than fail an operation: a name that is not there
    /// (LOOKUP), an attribute that is not set or a size probe (GETXATTR, LISTXATTR), a permission the
    /// caller asked about (ACCESS), a hole or end of file (LSEEK). Everything else is logged.</summary>
    internal static bool IsAnAnswer(FuseOpcode op, int errno) => (op, errno) switch
    {
        (FuseOpcode.Lookup, Errno.ENOENT) => true,
        (FuseOpcode.GetXattr or FuseOpcode.ListXattr, Errno.ENODATA or Errno.ERANGE) => true,
        (FuseOpcode.RemoveXattr, Errno.ENODATA) => true,
        (FuseOpcode.Access, Errno.EACCES or Errno.ENOENT) => true,
        (FuseOpcode.Lseek, Errno.ENXIO) => true,
        _ => false,
    };

    private int Reported(Span<byte> reply, int len, uint opcode, ulong node)
    {
        if (len >= FuseConst.OutHeaderSize && FailureLog is { } log)
        {
            int errno = -MemoryMarshal.Read<FuseOutHeader>(reply).Error;
            if (errno != 0 && !IsAnAnswer((FuseOpcode)opcode, errno)) log(opcode, node, errno);
        }
        return len;
    }

    private int Refuse(Span<byte> reply, ulong unique, uint opcode, string why)
    {
        RefusalLog?.Invoke($"fuse: refused {FuseOps.NameOf(opcode)} (unique {unique}): {why}");
        return FuseReply.Error(reply, unique, Errno.EINVAL);
    }

    /// <summary>Decodes one request through the opcode table, calls the file system and encodes the reply
    /// into <paramref name="reply"/>. Returns the reply length, 0 when there is none to send.</summary>
    internal int Dispatch(ReadOnlySpan<byte> req, Span<byte> reply)
    {
        if (req.Length < 16) return 0; // no unique id to answer to
        ulong unique = BinaryPrimitives.ReadUInt64LittleEndian(req[8..]);
        uint opcode = BinaryPrimitives.ReadUInt32LittleEndian(req[4..]);
        if (req.Length < FuseConst.InHeaderSize) return Refuse(reply, unique, opcode, $"{req.Length} bytes, shorter than the header");
        var h = MemoryMarshal.Read<FuseInHeader>(req);
        if (h.Len != req.Length) return Refuse(reply, unique, opcode, $"length field {h.Len}, {req.Length} bytes read");
        var code = (FuseOpcode)h.Opcode;
        var op = FuseOps.Get(code);
        // Requests without replies: never answer them, even when malformed. INTERRUPT is ignored on
        // purpose: no request here waits for anything but the backing file system, so the interrupted
        // request's own reply comes promptly and the kernel then drops the interrupt.
        if (op is { Replies: false })
        {
            try { Forget(code, h.NodeId, req[(FuseConst.InHeaderSize + h.TotalExtlen * 8)..]); }
            catch (Exception) { /* nothing to answer */ }
            return 0;
        }
        int ext = h.TotalExtlen * 8;
        if (FuseConst.InHeaderSize + ext > req.Length) return Refuse(reply, unique, opcode, $"extensions of {ext} bytes do not fit");
        if (op == null) return Reported(reply, FuseReply.Error(reply, unique, Errno.ENOSYS), opcode, h.NodeId);
        if (op.Handler == null) return Refuse(reply, unique, opcode, "only once, at the start of the session");
        var body = req[FuseConst.InHeaderSize..(req.Length - ext)];
        var c = new FuseContext(unique, h.Uid, h.Gid, h.Pid);
        if (FuseOps.Parse(op, code, in c, h.NodeId, body, out var r) is { } why) return Refuse(reply, unique, opcode, why);
        try
        {
            int len = op.Handler(_fs, in r, reply);
            return len != FuseReply.Malformed ? Reported(reply, len, opcode, h.NodeId) : Refuse(reply, unique, opcode, "its size field overruns the data");
        }
        catch (Exception)
        {
            return Reported(reply, FuseReply.Error(reply, unique, Errno.EIO), opcode, h.NodeId);
        }
    }

    private void Forget(FuseOpcode op, ulong node, ReadOnlySpan<byte> body)
    {
        if (op == FuseOpcode.Forget)
        {
            if (body.Length >= 8) _fs.Forget(node, BinaryPrimitives.ReadUInt64LittleEndian(body));
        }
        else if (op == FuseOpcode.BatchForget && body.Length >= 8)
        {
            uint count = BinaryPrimitives.ReadUInt32LittleEndian(body);
            var items = body[8..];
            for (uint i = 0; i < count && items.Length >= 16; i++, items = items[16..])
            {
                var one = MemoryMarshal.Read<FuseForgetOne>(items);
                _fs.Forget(one.NodeId, one.NLookup);
            }
        }
    }
}
