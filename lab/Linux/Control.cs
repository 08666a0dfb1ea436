using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Lab.Daemon;

namespace Lab.Linux;

/// <summary>
/// The C# mirror of lab/preload/labproto.h. Change both together: ControlProtocolTests compares
/// every struct's size and field offsets with what the C compiler prints (tests/progs/protolayout.c).
/// </summary>
public static class Proto
{
    public const uint Version = 1;
    public const int MaxPayload = 65536;

    public const uint Hello = 1, ChildHello = 2, Map = 3, OpenShared = 4, Unmap = 5, Msync = 6,
        Protect = 7, ForkPrepare = 8, ForkDone = 9, Stat = 10, Reaped = 11, Remap = 12, DropCaches = 13,
        AgentHello = 14, Evict = 15, SetLimit = 16, Release = 17, Wire = 18, Advise = 20, RemapPrepare = 21, Outside = 30, Reply = 0x8000;

    public const int MadvNormal = 0, MadvRandom = 1, MadvSequential = 2, MadvWillNeed = 3, MadvDontFork = 10, MadvDoFork = 11, MadvWipeOnFork = 18, MadvKeepOnFork = 19, MremapDontUnmap = 4;

    public const uint HelloForkChild = 1;
    public const int MapAnon = 1, MapFilePrivate = 2, MapFileShared = 3;
    public const int WireOn = 1, WireFault = 2;
    /// <summary>EPROTONOSUPPORT: the status of a HELLO whose version is not <see cref="Version"/>.</summary>
    public const int EProtoNoSupport = 93;

    public static readonly int HeaderSize = Unsafe.SizeOf<LabHdr>();
    public static readonly int SpanSize = Unsafe.SizeOf<LabSpan>();
    public static readonly int MaxEvictSpans = MaxPayload / SpanSize;

    /// <summary>A message struct from the start of a payload: false if the payload is shorter.</summary>
    public static bool TryRead<T>(ReadOnlySpan<byte> payload, out T value) where T : unmanaged
    {
        if (payload.Length < Unsafe.SizeOf<T>()) { value = default; return false; }
        value = MemoryMarshal.Read<T>(payload);
        return true;
    }

    /// <summary>A message struct's bytes, to send as a payload (no copy).</summary>
    public static ReadOnlySpan<byte> Bytes<T>(ref readonly T value) where T : unmanaged =>
        MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value));

    public static string CString(ReadOnlySpan<byte> b)
    {
        int n = b.IndexOf((byte)0);
        return System.Text.Encoding.UTF8.GetString(n < 0 ? b : b[..n]);
    }
}

// The message structs, field for field as in labproto.h (x86-64: natural alignment, little-endian).

[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct LabHdr { public uint Type; public uint Len; public uint Seq; public int Status; }

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public unsafe struct LabHello
{
    public uint Version;
    public uint Flags;
    public int Pid;
    public int Ppid;
    public fixed byte Vm[16];
    public fixed byte Comm[32];
    public ulong RunId;

    public string VmName() { fixed (byte* b = Vm) return Proto.CString(new ReadOnlySpan<byte>(b, 16)); }
    public string CommName() { fixed (byte* b = Comm) return Proto.CString(new ReadOnlySpan<byte>(b, 32)); }
}

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct LabHelloReply { public ulong Features; }

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct LabMap
{
    public ulong Addr, Len;
    public int Prot, Flags, Kind, Pad;
    public ulong Ino, Offset;
}

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct LabOpenShared { public ulong Ino; }

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct LabOpenSharedReply { public ulong Size; }

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct LabRange { public ulong Addr, Len; public int Prot, Flags; }

[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct LabReaped { public int Pid, Pad; }

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct LabRemap { public ulong OldAddr, OldLen, NewAddr, NewLen; public int Flags, Pad; }

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct LabStat { public ulong RunId; }

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct LabAgentHello { public int Pid, Pad; public ulong Scratch, ScratchLen; }

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct LabSpan { public ulong Addr, Len; }

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct LabSetLimit { public ulong RunId, Bytes; }

[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct LabForkDone { public int ChildPid, Pad; }

[StructLayout(LayoutKind.Sequential, Pack = 8)]
public struct LabOutside { public ulong FilePages, StackPages, HeapPages, AnonPages, OtherPages; public uint Flags, Pad; }

/// <summary>A received message; <see cref="Fd"/>: the descriptor it carried (SCM_RIGHTS), the receiver's to dispose.</summary>
public readonly record struct Message(uint Type, uint Seq, int Status, int Length, Fd? Fd);

/// <summary>
/// One Unix stream connection speaking framed messages (header + payload, optional fd by
/// SCM_RIGHTS). Not thread-safe: one reader and one writer at a time.
/// </summary>
public sealed unsafe class ControlConnection : IDisposable
{
    readonly byte[] _buffer = new byte[Proto.HeaderSize + Proto.MaxPayload];
    readonly Fd _fd;

    public ControlConnection(Fd fd) { _fd = fd; }

    public Fd Fd => _fd;

    /// <summary>The payload of the last message received.</summary>
    public Span<byte> Payload(in Message m) => _buffer.AsSpan(Proto.HeaderSize, m.Length);

    public static ControlConnection? Connect(string path, out int errno)
    {
        errno = 0;
        Span<byte> addr = stackalloc byte[110];
        if (!Native.SockAddr(path, addr, out uint len)) { errno = 36; return null; }
        var fd = Native.Socket(Native.AF_UNIX, Native.SOCK_STREAM | Native.SOCK_CLOEXEC, 0);
        if (fd.IsInvalid) { errno = Errno.Last; return null; }
        fixed (byte* a = addr)
            if (Native.Connect(fd, a, len) != 0) { errno = Errno.Last; fd.Dispose(); return null; }
        return new ControlConnection(fd);
    }

    /// <summary>Peer credentials (SO_PEERCRED).</summary>
    public Native.Ucred PeerCred()
    {
        Native.Ucred c = default;
        uint len = (uint)sizeof(Native.Ucred);
        Native.GetSockOpt(_fd, Native.SOL_SOCKET, Native.SO_PEERCRED, &c, &len);
        return c;
    }

    /// <summary>Receive one message. Returns null on EOF or a malformed frame; the fd, if any, is owned by the caller.</summary>
    public Message? Receive()
    {
        Fd? fd = null;
        if (!ReadExact(0, Proto.HeaderSize, ref fd)) { CloseFd(fd); return null; }
        var h = MemoryMarshal.Read<LabHdr>(_buffer);
        if (h.Len > Proto.MaxPayload) { CloseFd(fd); return null; }
        if (h.Len > 0 && !ReadExact(Proto.HeaderSize, (int)h.Len, ref fd)) { CloseFd(fd); return null; }
        return new Message(h.Type, h.Seq, h.Status, (int)h.Len, fd);
    }

    bool ReadExact(int offset, int count, ref Fd? fd)
    {
        byte* cbuf = stackalloc byte[64];
        fixed (byte* b = _buffer)
        {
            while (count > 0)
            {
                var iov = new Native.IoVec { Base = b + offset, Len = (nuint)count };
                var mh = new Native.MsgHdr { Iov = &iov, IovLen = 1, Control = cbuf, ControlLen = 64 };
                nint n = Native.RecvMsg(_fd, &mh, Native.MSG_CMSG_CLOEXEC);
                if (n < 0 && Errno.Last == Errno.EINTR) continue;
                if (n <= 0) return false;
                if (mh.ControlLen >= 20)
                {
                    // struct cmsghdr { size_t len; int level; int type; } then the fd at offset 16.
                    int level = *(int*)(cbuf + 8), ctype = *(int*)(cbuf + 12);
                    if (level == Native.SOL_SOCKET && ctype == Native.SCM_RIGHTS)
                    {
                        int got = *(int*)(cbuf + 16);
                        fd?.Dispose();
                        fd = new Fd(got);
                    }
                }
                offset += (int)n; count -= (int)n;
            }
        }
        return true;
    }

    /// <summary>Send a message whose payload is one message struct.</summary>
    public bool Send<T>(uint type, uint seq, int status, in T payload, Fd? fd = null) where T : unmanaged =>
        Send(type, seq, status, Proto.Bytes(in payload), fd);

    /// <summary>Send a message; <paramref name="fd"/>, if any, travels as SCM_RIGHTS (held until sent). Returns false if the peer is gone.</summary>
    public bool Send(uint type, uint seq, int status, ReadOnlySpan<byte> payload, Fd? fd = null)
    {
        var hdr = new LabHdr { Type = type, Len = (uint)payload.Length, Seq = seq, Status = status };
        byte* cbuf = stackalloc byte[24];
        byte* h = (byte*)&hdr;
        using var passed = Fd.Lease.Of(fd);
        fixed (byte* p = payload)
        {
            var iov = stackalloc Native.IoVec[2];
            iov[0] = new Native.IoVec { Base = h, Len = (nuint)Proto.HeaderSize };
            iov[1] = new Native.IoVec { Base = p, Len = (nuint)payload.Length };
            var mh = new Native.MsgHdr { Iov = iov, IovLen = payload.Length > 0 ? 2u : 1u };
            if (fd != null)
            {
                *(ulong*)cbuf = 20;                    // CMSG_LEN(sizeof(int))
                *(int*)(cbuf + 8) = Native.SOL_SOCKET;
                *(int*)(cbuf + 12) = Native.SCM_RIGHTS;
                *(int*)(cbuf + 16) = passed.Number;
                mh.Control = cbuf; mh.ControlLen = 24;  // CMSG_SPACE(sizeof(int))
            }
            long total = Proto.HeaderSize + payload.Length, sent = 0;
            while (sent < total)
            {
                nint n = Native.SendMsg(_fd, &mh, Native.MSG_NOSIGNAL);
                if (n < 0 && Errno.Last == Errno.EINTR) continue;
                if (n <= 0) return false;
                sent += n;
                if (sent >= total) break;
                // A short send: continue with plain data, the fd already went with the first part.
                mh.Control = null; mh.ControlLen = 0;
                long skip = n;
                for (int i = 0; i < (int)mh.IovLen; i++)
                {
                    long take = Math.Min(skip, (long)mh.Iov[i].Len);
                    mh.Iov[i].Base = (byte*)mh.Iov[i].Base + take; mh.Iov[i].Len -= (nuint)take; skip -= take;
                }
            }
        }
        return true;
    }

    static void CloseFd(Fd? fd) => fd?.Dispose();

    /// <summary>Wake a thread blocked in Receive (used at shutdown).</summary>
    public void Shutdown() => Native.Shutdown(_fd, 2);   // EBADF once disposed

    public void Dispose() => _fd.Dispose();
}

/// <summary>
/// A client of the daemon's control socket: the `lab` command's requests (stat, set-limit,
/// drop-caches), one at a time, each checked to be answered by its own reply.
/// </summary>
public sealed class ControlClient : IDisposable
{
    readonly ControlConnection _conn;
    uint _seq;

    ControlClient(ControlConnection conn) { _conn = conn; }

    /// <summary>Connect to the control socket at path; null (and errno) if no daemon answers there.</summary>
    public static ControlClient? TryConnect(string path, out int errno)
    {
        var conn = ControlConnection.Connect(path, out errno);
        return conn == null ? null : new ControlClient(conn);
    }

    /// <summary>The daemon's pid (SO_PEERCRED).</summary>
    public int DaemonPid => _conn.PeerCred().Pid;

    /// <summary>The counters, as text lines "name value" (run 0: the whole mount).</summary>
    public string Stat(ulong run)
    {
        var q = new LabStat { RunId = run };
        var m = Request(Proto.Stat, Proto.Bytes(in q));
        return System.Text.Encoding.UTF8.GetString(_conn.Payload(m));
    }

    /// <summary>The resident limit of one run (0: none); 0 or the daemon's errno.</summary>
    public int SetLimit(ulong run, ulong bytes)
    {
        var q = new LabSetLimit { RunId = run, Bytes = bytes };
        return Request(Proto.SetLimit, Proto.Bytes(in q)).Status;
    }

    /// <summary>Drop the clean pages of the lab's page cache.</summary>
    public void DropCaches() => Request(Proto.DropCaches, ReadOnlySpan<byte>.Empty);

    Message Request(uint type, ReadOnlySpan<byte> payload)
    {
        uint seq = ++_seq;
        if (!_conn.Send(type, seq, 0, payload) || _conn.Receive() is not Message m)
            throw new LabException("the lab daemon did not answer");
        m.Fd?.Dispose();
        if (m.Type != (type | Proto.Reply) || m.Seq != seq)
            throw new LabException($"the lab daemon answered request {type} (seq {seq}) with message {m.Type} (seq {m.Seq})");
        return m;
    }

    public void Dispose() => _conn.Dispose();
}
