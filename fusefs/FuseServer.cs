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
    private readonly List<int> _fds = new();
    private readonly List<Thread> _threads = new();
    private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _devFd;
    private int _stopFd = -1;
    private bool _mounted, _started, _unmounted;
    private int _running;
    private int _destroyed;
    private bool _viaFusermount;
    private readonly FuseNotifications _notifications;

    public string MountPoint { get; }
    /// <summary>Protocol minor the kernel offered, and the one we answered with.</summary>
    public uint KernelMinor { get; private set; }
    public uint Minor { get; private set; }
    /// <summary>Completes when every request thread has ended (unmounted, or aborted).</summary>
    public Task Completion => _done.Task;

    private FuseServer(string mountPoint, IFuseFileSystem fs, int devFd)
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
        int dev = FuseMounter.Mount(mountpoint, opts ?? new FuseMountOptions(), out string mp, out bool viaFusermount);
        var server = new FuseServer(mp, fs, dev) { _mounted = true, _viaFusermount = viaFusermount };
        server._fds.Add(server._devFd);
        fs.Attach(server);
        return server;
    }

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
            if (_stopFd < 0) throw new IOException($"eventfd: {Native.StrError(Native.Errno)}");
            _running = threads;
            _notifications.Start(Minor);
            for (int i = 0; i < threads; i++)
            {
                int fd = i == 0 ? _devFd : CloneDevFd();
                if (fd != _devFd) _fds.Add(fd);
                var t = new Thread(() => Loop(fd)) { IsBackground = true, Name = $"fuse-{i}" };
                _threads.Add(t);
                t.Start();
            }
        }
    }

    // A cloned fd has its own request queue reader, so threads do not contend on one file.
    private int CloneDevFd()
    {
        int fd = Native.Open("/dev/fuse", Native.O_RDWR | Native.O_CLOEXEC | Native.O_NONBLOCK, 0);
        if (fd < 0) return _devFd;
        uint master = (uint)_devFd;
        if (Native.Ioctl(fd, Native.FUSE_DEV_IOC_CLONE, &master) != 0)
        {
            Native.Close(fd);
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
                nint n = Native.Read(_devFd, req, ReqBufSize);
                if (n < 0)
                {
                    int e = Native.Errno;
                    if (e == Errno.EINTR) continue;
                    if (e == Errno.EAGAIN && Environment.TickCount64 < deadline)
                    {
                        Native.PollFd p = new() { Fd = _devFd, Events = Native.POLLIN };
                        Native.Poll(&p, 1, 1000);
                        continue;
                    }
                    throw new IOException($"FUSE INIT not received: {Native.StrError(e)}");
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
                                          | (_fs.SupportsReadDirPlus ? FuseConst.DoReaddirplus | FuseConst.ReaddirplusAuto : 0)),
                    Flags2 = flags2 & FuseConst.DirectIoAllowMmap2,
                    MaxBackground = 64,
                    CongestionThreshold = 48,
                    MaxWrite = FuseConst.MaxWrite,
                    TimeGran = 1,
                    MaxPages = FuseConst.MaxPages,
                };
                byte* reply = stackalloc byte[FuseConst.OutHeaderSize + sizeof(FuseInitOut)];
                var rs = new Span<byte>(reply, FuseConst.OutHeaderSize + sizeof(FuseInitOut));
                MemoryMarshal.Write(rs[FuseConst.OutHeaderSize..], in o);
                WriteHeader(rs, rs.Length, 0, h.Unique);
                if (Native.Write(_devFd, reply, (nuint)rs.Length) < 0)
                    throw new IOException($"FUSE INIT reply failed: {Native.StrError(Native.Errno)}");
                return;
            }
        }
        finally { NativeMemory.AlignedFree(req); }
    }

    private void Loop(int fd)
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
                    int e = Native.Errno;
                    if (e == Errno.EINTR || e == Errno.ENOENT) continue;
                    if (e != Errno.EAGAIN) break; // ENODEV: unmounted; anything else: the session is unusable
                    pfd[0] = new Native.PollFd { Fd = fd, Events = Native.POLLIN };
                    pfd[1] = new Native.PollFd { Fd = _stopFd, Events = Native.POLLIN };
                    if (Native.Poll(pfd, 2, -1) < 0 && Native.Errno != Errno.EINTR) break;
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
            if (!Completion.Wait(2000) && _stopFd >= 0)
            {
                ulong one = 1;
                Native.Write(_stopFd, (byte*)&one, 8);
            }
            foreach (var t in _threads) t.Join(5000);
        }
        foreach (var fd in _fds) Native.Close(fd);
        _fds.Clear();
        _devFd = -1;
        if (_stopFd >= 0) { Native.Close(_stopFd); _stopFd = -1; }
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
        foreach (var fd in _fds) Native.Close(fd);
        _fds.Clear();
        _devFd = -1;
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

    private static int WriteHeader(Span<byte> reply, int len, int errno, ulong unique)
    {
        var h = new FuseOutHeader { Len = (uint)len, Error = -errno, Unique = unique };
        MemoryMarshal.Write(reply, in h);
        return len;
    }

    private static int Error(Span<byte> reply, ulong unique, int errno) =>
        WriteHeader(reply, FuseConst.OutHeaderSize, errno, unique);

    private static int Ok<T>(Span<byte> reply, ulong unique, in T value) where T : unmanaged
    {
        MemoryMarshal.Write(reply[FuseConst.OutHeaderSize..], in value);
        return WriteHeader(reply, FuseConst.OutHeaderSize + sizeof(T), 0, unique);
    }

    private static int Result<T>(Span<byte> reply, ulong unique, int errno, in T value) where T : unmanaged =>
        errno == 0 ? Ok(reply, unique, in value) : Error(reply, unique, errno);

    /// <summary>Splits one NUL-terminated name off the front of <paramref name="body"/>.</summary>
    private static bool TakeName(scoped ref ReadOnlySpan<byte> body, out ReadOnlySpan<byte> name)
    {
        int nul = body.IndexOf((byte)0);
        if (nul < 0) { name = default; return false; }
        name = body[..nul];
        body = body[(nul + 1)..];
        return true;
    }

    /// <summary>Decodes one request, calls the file system and encodes the reply into
    /// <paramref name="reply"/>. Returns the reply length, 0 when there is none to send.</summary>
    internal int Dispatch(ReadOnlySpan<byte> req, Span<byte> reply)
    {
        if (req.Length < 16) return 0; // no unique id to answer to
        ulong unique = BinaryPrimitives.ReadUInt64LittleEndian(req[8..]);
        if (req.Length < FuseConst.InHeaderSize) return Error(reply, unique, Errno.EINVAL);
        var h = MemoryMarshal.Read<FuseInHeader>(req);
        if (h.Len != req.Length) return Error(reply, unique, Errno.EINVAL);
        var op = (FuseOpcode)h.Opcode;
        // Requests without replies: never answer them, even when malformed. INTERRUPT is ignored on
        // purpose: no request here waits for anything but the backing file system, so the interrupted
        // request's own reply comes promptly and the kernel then drops the interrupt.
        if (op is FuseOpcode.Forget or FuseOpcode.BatchForget or FuseOpcode.Interrupt)
        {
            try { Forget(op, h.NodeId, req[(FuseConst.InHeaderSize + h.TotalExtlen * 8)..]); }
            catch (Exception) { /* nothing to answer */ }
            return 0;
        }
        int ext = h.TotalExtlen * 8;
        if (FuseConst.InHeaderSize + ext > req.Length) return Error(reply, unique, Errno.EINVAL);
        var body = req[FuseConst.InHeaderSize..(req.Length - ext)];
        var c = new FuseContext(unique, h.Uid, h.Gid, h.Pid);
        try
        {
            return Handle(op, in c, h.NodeId, body, reply);
        }
        catch (Exception)
        {
            return Error(reply, unique, Errno.EIO);
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

    private static bool Need<T>(ReadOnlySpan<byte> body, out T value) where T : unmanaged
    {
        if (body.Length < sizeof(T)) { value = default; return false; }
        value = MemoryMarshal.Read<T>(body);
        return true;
    }

    private int Handle(FuseOpcode op, in FuseContext c, ulong node, ReadOnlySpan<byte> body, Span<byte> reply)
    {
        ulong u = c.Unique;
        int err;
        FuseEntryOut entry;
        ReadOnlySpan<byte> name, name2;
        var payload = reply[FuseConst.OutHeaderSize..];
        switch (op)
        {
            case FuseOpcode.Lookup:
                if (!TakeName(ref body, out name)) break;
                err = _fs.Lookup(in c, node, name, out entry);
                return Result(reply, u, err, in entry);
            case FuseOpcode.GetAttr:
            {
                ulong? fh = null;
                if (Need(body, out FuseGetAttrIn gi) && (gi.GetAttrFlags & FuseConst.GetAttrFh) != 0) fh = gi.Fh;
                err = _fs.GetAttr(in c, node, fh, out var attr);
                return Result(reply, u, err, in attr);
            }
            case FuseOpcode.SetAttr:
            {
                if (!Need(body, out FuseSetAttrIn si)) break;
                err = _fs.SetAttr(in c, node, in si, out var attr);
                return Result(reply, u, err, in attr);
            }
            case FuseOpcode.ReadLink:
            {
                err = _fs.ReadLink(in c, node, payload[..Math.Min(payload.Length, 4096)], out int len);
                return err != 0 ? Error(reply, u, err) : WriteHeader(reply, FuseConst.OutHeaderSize + len, 0, u);
            }
            case FuseOpcode.Symlink:
                if (!TakeName(ref body, out name) || !TakeName(ref body, out name2)) break;
                err = _fs.Symlink(in c, node, name, name2, out entry);
                return Result(reply, u, err, in entry);
            case FuseOpcode.Mknod:
            {
                if (!Need(body, out FuseMknodIn mi)) break;
                body = body[sizeof(FuseMknodIn)..];
                if (!TakeName(ref body, out name)) break;
                err = _fs.Mknod(in c, node, name, mi.Mode, mi.Rdev, out entry);
                return Result(reply, u, err, in entry);
            }
            case FuseOpcode.Mkdir:
            {
                if (!Need(body, out FuseMkdirIn mi)) break;
                body = body[sizeof(FuseMkdirIn)..];
                if (!TakeName(ref body, out name)) break;
                err = _fs.Mkdir(in c, node, name, mi.Mode, out entry);
                return Result(reply, u, err, in entry);
            }
            case FuseOpcode.Unlink:
                if (!TakeName(ref body, out name)) break;
                return Error(reply, u, _fs.Unlink(in c, node, name));
            case FuseOpcode.Rmdir:
                if (!TakeName(ref body, out name)) break;
                return Error(reply, u, _fs.Rmdir(in c, node, name));
            case FuseOpcode.Rename:
            case FuseOpcode.Rename2:
            {
                ulong newDir;
                uint flags = 0;
                if (op == FuseOpcode.Rename)
                {
                    if (body.Length < 8) break;
                    newDir = BinaryPrimitives.ReadUInt64LittleEndian(body);
                    body = body[8..];
                }
                else
                {
                    if (!Need(body, out FuseRename2In ri)) break;
                    newDir = ri.NewDir;
                    flags = ri.Flags;
                    body = body[sizeof(FuseRename2In)..];
                }
                if (!TakeName(ref body, out name) || !TakeName(ref body, out name2)) break;
                return Error(reply, u, _fs.Rename(in c, node, name, newDir, name2, flags));
            }
            case FuseOpcode.Link:
            {
                if (body.Length < 8) break;
                ulong oldNode = BinaryPrimitives.ReadUInt64LittleEndian(body);
                body = body[8..];
                if (!TakeName(ref body, out name)) break;
                err = _fs.Link(in c, oldNode, node, name, out entry);
                return Result(reply, u, err, in entry);
            }
            case FuseOpcode.Open:
            case FuseOpcode.OpenDir:
            {
                if (!Need(body, out FuseOpenIn oi)) break;
                FuseOpenOut oo;
                err = op == FuseOpcode.Open ? _fs.Open(in c, node, oi.Flags, out oo) : _fs.OpenDir(in c, node, oi.Flags, out oo);
                return Result(reply, u, err, in oo);
            }
            case FuseOpcode.Create:
            {
                if (!Need(body, out FuseCreateIn ci)) break;
                body = body[sizeof(FuseCreateIn)..];
                if (!TakeName(ref body, out name)) break;
                err = _fs.Create(in c, node, name, ci.Flags, ci.Mode, out entry, out var oo);
                if (err != 0) return Error(reply, u, err);
                MemoryMarshal.Write(payload, in entry);
                MemoryMarshal.Write(payload[sizeof(FuseEntryOut)..], in oo);
                return WriteHeader(reply, FuseConst.OutHeaderSize + sizeof(FuseEntryOut) + sizeof(FuseOpenOut), 0, u);
            }
            case FuseOpcode.Read:
            {
                if (!Need(body, out FuseReadIn ri)) break;
                if (ri.Offset > long.MaxValue) return Error(reply, u, Errno.EINVAL);
                int size = (int)Math.Min(ri.Size, (uint)payload.Length);
                err = _fs.Read(in c, node, ri.Fh, (long)ri.Offset, payload[..size], out int n);
                return err != 0 ? Error(reply, u, err) : WriteHeader(reply, FuseConst.OutHeaderSize + Math.Clamp(n, 0, size), 0, u);
            }
            case FuseOpcode.Write:
            {
                if (!Need(body, out FuseWriteIn wi)) break;
                var data = body[sizeof(FuseWriteIn)..];
                if (wi.Size > data.Length || wi.Offset > long.MaxValue) break;
                err = _fs.Write(in c, node, wi.Fh, (long)wi.Offset, data[..(int)wi.Size], out int n);
                var wo = new FuseWriteOut { Size = (uint)n };
                return Result(reply, u, err, in wo);
            }
            case FuseOpcode.StatFs:
                err = _fs.StatFs(in c, node, out var sf);
                return Result(reply, u, err, in sf);
            case FuseOpcode.Release:
            case FuseOpcode.ReleaseDir:
            {
                if (!Need(body, out FuseReleaseIn ri)) break;
                if (op == FuseOpcode.Release) _fs.Release(in c, node, ri.Fh);
                else _fs.ReleaseDir(in c, node, ri.Fh);
                return Error(reply, u, 0);
            }
            case FuseOpcode.Fsync:
            case FuseOpcode.FsyncDir:
            {
                if (!Need(body, out FuseFsyncIn fi)) break;
                bool dataOnly = (fi.FsyncFlags & 1) != 0;
                return Error(reply, u, op == FuseOpcode.Fsync ? _fs.Fsync(in c, node, fi.Fh, dataOnly) : _fs.FsyncDir(in c, node, fi.Fh, dataOnly));
            }
            case FuseOpcode.Flush:
                if (!Need(body, out FuseFlushIn fl)) break;
                return Error(reply, u, _fs.Flush(in c, node, fl.Fh));
            case FuseOpcode.SetXattr:
            {
                if (!Need(body, out FuseSetXattrIn xi)) break;
                body = body[sizeof(FuseSetXattrIn)..];
                if (!TakeName(ref body, out name) || xi.Size > body.Length) break;
                return Error(reply, u, _fs.SetXattr(in c, node, name, body[..(int)xi.Size], (int)xi.Flags));
            }
            case FuseOpcode.GetXattr:
            case FuseOpcode.ListXattr:
            {
                if (!Need(body, out FuseGetXattrIn xi)) break;
                body = body[sizeof(FuseGetXattrIn)..];
                name = default;
                if (op == FuseOpcode.GetXattr && !TakeName(ref body, out name)) break;
                int cap = (int)Math.Min(xi.Size, (uint)payload.Length);
                int size;
                err = op == FuseOpcode.GetXattr
                    ? _fs.GetXattr(in c, node, name, payload[..cap], out size)
                    : _fs.ListXattr(in c, node, payload[..cap], out size);
                if (err != 0) return Error(reply, u, err);
                if (xi.Size == 0) // the caller asks how big
                {
                    var xo = new FuseGetXattrOut { Size = (uint)size };
                    return Ok(reply, u, in xo);
                }
                return WriteHeader(reply, FuseConst.OutHeaderSize + Math.Clamp(size, 0, cap), 0, u);
            }
            case FuseOpcode.RemoveXattr:
                if (!TakeName(ref body, out name)) break;
                return Error(reply, u, _fs.RemoveXattr(in c, node, name));
            case FuseOpcode.ReadDir:
            case FuseOpcode.ReadDirPlus:
            {
                if (!Need(body, out FuseReadIn ri)) break;
                if (ri.Offset > long.MaxValue) return Error(reply, u, Errno.EINVAL);
                bool plus = op == FuseOpcode.ReadDirPlus;
                var w = new FuseDirWriter(payload[..(int)Math.Min(ri.Size, (uint)payload.Length)], plus);
                err = plus ? _fs.ReadDirPlus(in c, node, ri.Fh, (long)ri.Offset, ref w)
                           : _fs.ReadDir(in c, node, ri.Fh, (long)ri.Offset, ref w);
                return err != 0 ? Error(reply, u, err) : WriteHeader(reply, FuseConst.OutHeaderSize + w.Used, 0, u);
            }
            case FuseOpcode.CopyFileRange:
            {
                if (!Need(body, out FuseCopyFileRangeIn ci)) break;
                if (ci.OffIn > long.MaxValue || ci.OffOut > long.MaxValue) return Error(reply, u, Errno.EINVAL);
                // The reply holds a 32-bit count; a short copy makes the caller ask again.
                long len = (long)Math.Min(ci.Len, 1UL << 30);
                err = _fs.CopyFileRange(in c, node, ci.FhIn, (long)ci.OffIn, ci.NodeIdOut, ci.FhOut, (long)ci.OffOut,
                                        len, ci.Flags, out long copied);
                var wo = new FuseWriteOut { Size = (uint)Math.Clamp(copied, 0, len) };
                return Result(reply, u, err, in wo);
            }
            case FuseOpcode.Tmpfile:
            {
                // The name the kernel sends with it is a placeholder ("/"): not used.
                if (!Need(body, out FuseCreateIn ci)) break;
                err = _fs.Tmpfile(in c, node, ci.Flags, ci.Mode, out entry, out var oo);
                if (err != 0) return Error(reply, u, err);
                MemoryMarshal.Write(payload, in entry);
                MemoryMarshal.Write(payload[sizeof(FuseEntryOut)..], in oo);
                return WriteHeader(reply, FuseConst.OutHeaderSize + sizeof(FuseEntryOut) + sizeof(FuseOpenOut), 0, u);
            }
            case FuseOpcode.SyncFs:
                return Error(reply, u, _fs.SyncFs(in c));
            case FuseOpcode.Access:
                if (!Need(body, out FuseAccessIn ai)) break;
                return Error(reply, u, _fs.Access(in c, node, (int)ai.Mask));
            case FuseOpcode.Fallocate:
            {
                if (!Need(body, out FuseFallocateIn fi)) break;
                if (fi.Offset > long.MaxValue || fi.Length > long.MaxValue) return Error(reply, u, Errno.EINVAL);
                return Error(reply, u, _fs.Fallocate(in c, node, fi.Fh, (int)fi.Mode, (long)fi.Offset, (long)fi.Length));
            }
            case FuseOpcode.Lseek:
            {
                if (!Need(body, out FuseLseekIn li)) break;
                err = _fs.Lseek(in c, node, li.Fh, (long)li.Offset, (int)li.Whence, out long pos);
                var lo = new FuseLseekOut { Offset = (ulong)pos };
                return Result(reply, u, err, in lo);
            }
            case FuseOpcode.Init:
                break; // only once, at Start
            default:
                return Error(reply, u, Errno.ENOSYS);
        }
        return Error(reply, u, Errno.EINVAL); // too short for its struct, or a name without its NUL
    }
}
