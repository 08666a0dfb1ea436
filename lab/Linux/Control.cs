using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Lab.Linux;

/// <summary>The C# mirror of lab/preload/labproto.h. Change both together.</summary>
public static class Proto
{
    public const uint Version = 1;
    public const int HeaderSize = 16;
    public const int MaxPayload = 65536;

    public const uint Hello = 1, ChildHello = 2, Map = 3, OpenShared = 4, Unmap = 5, Msync = 6,
        Protect = 7, ForkPrepare = 8, ForkDone = 9, Stat = 10, Reaped = 11, Remap = 12, DropCaches = 13,
        AgentHello = 14, Evict = 15, SetLimit = 16, Release = 17, Wire = 18, Advise = 20, RemapPrepare = 21, Reply = 0x8000;

    public const int MadvDontFork = 10, MadvDoFork = 11, MadvWipeOnFork = 18, MadvKeepOnFork = 19, MremapDontUnmap = 4;

    public const uint HelloForkChild = 1;
    public const int MapAnon = 1, MapFilePrivate = 2, MapFileShared = 3;

    public const int HelloSize = 4 + 4 + 4 + 4 + 16 + 32 + 8;   // struct lab_hello
    public const int MapSize = 8 + 8 + 4 + 4 + 4 + 4 + 8 + 8;    // struct lab_map
    public const int RangeSize = 8 + 8 + 4 + 4;                  // struct lab_range
    public const int SpanSize = 16;                              // struct lab_span
    public const int MaxEvictSpans = MaxPayload / SpanSize;

    public static string CString(ReadOnlySpan<byte> b)
    {
        int n = b.IndexOf((byte)0);
        return System.Text.Encoding.UTF8.GetString(n < 0 ? b : b[..n]);
    }
}

public readonly record struct Message(uint Type, uint Seq, int Status, int Length, int Fd);

/// <summary>
/// One Unix stream connection speaking framed messages (header + payload, optional fd by
/// SCM_RIGHTS). Not thread-safe: one reader and one writer at a time.
/// </summary>
public sealed unsafe class ControlConnection : IDisposable
{
    readonly byte[] _buffer = new byte[Proto.HeaderSize + Proto.MaxPayload];
    int _fd;

    public ControlConnection(int fd) { _fd = fd; }

    public int Fd => _fd;

    /// <summary>The payload of the last message received.</summary>
    public Span<byte> Payload(in Message m) => _buffer.AsSpan(Proto.HeaderSize, m.Length);

    public static ControlConnection? Connect(string path, out int errno)
    {
        errno = 0;
        Span<byte> addr = stackalloc byte[110];
        if (!Native.SockAddr(path, addr, out uint len)) { errno = 36; return null; }
        int fd = Native.socket(Native.AF_UNIX, Native.SOCK_STREAM | Native.SOCK_CLOEXEC, 0);
        if (fd < 0) { errno = Native.Errno; return null; }
        fixed (byte* a = addr)
            if (Native.connect(fd, a, len) != 0) { errno = Native.Errno; Native.close(fd); return null; }
        return new ControlConnection(fd);
    }

    /// <summary>Peer credentials (SO_PEERCRED).</summary>
    public Native.Ucred PeerCred()
    {
        Native.Ucred c = default;
        uint len = (uint)sizeof(Native.Ucred);
        Native.getsockopt(_fd, Native.SOL_SOCKET, Native.SO_PEERCRED, &c, &len);
        return c;
    }

    /// <summary>Receive one message. Returns null on EOF or a malformed frame; the fd, if any, is owned by the caller.</summary>
    public Message? Receive()
    {
        int fd = -1;
        if (!ReadExact(0, Proto.HeaderSize, ref fd)) { CloseFd(fd); return null; }
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(_buffer.AsSpan(0));
        uint len = BinaryPrimitives.ReadUInt32LittleEndian(_buffer.AsSpan(4));
        uint seq = BinaryPrimitives.ReadUInt32LittleEndian(_buffer.AsSpan(8));
        int status = BinaryPrimitives.ReadInt32LittleEndian(_buffer.AsSpan(12));
        if (len > Proto.MaxPayload) { CloseFd(fd); return null; }
        if (len > 0 && !ReadExact(Proto.HeaderSize, (int)len, ref fd)) { CloseFd(fd); return null; }
        return new Message(type, seq, status, (int)len, fd);
    }

    bool ReadExact(int offset, int count, ref int fd)
    {
        byte* cbuf = stackalloc byte[64];
        fixed (byte* b = _buffer)
        {
            while (count > 0)
            {
                var iov = new Native.IoVec { Base = b + offset, Len = (nuint)count };
                var mh = new Native.MsgHdr { Iov = &iov, IovLen = 1, Control = cbuf, ControlLen = 64 };
                nint n = Native.recvmsg(_fd, &mh, Native.MSG_CMSG_CLOEXEC);
                if (n < 0 && Native.Errno == Native.EINTR) continue;
                if (n <= 0) return false;
                if (mh.ControlLen >= 20)
                {
                    // struct cmsghdr { size_t len; int level; int type; } then the fd at offset 16.
                    int level = *(int*)(cbuf + 8), ctype = *(int*)(cbuf + 12);
                    if (level == Native.SOL_SOCKET && ctype == Native.SCM_RIGHTS)
                    {
                        int got = *(int*)(cbuf + 16);
                        if (fd >= 0) Native.close(fd);
                        fd = got;
                    }
                }
                offset += (int)n; count -= (int)n;
            }
        }
        return true;
    }

    /// <summary>Send a message; <paramref name="fd"/> &gt;= 0 travels as SCM_RIGHTS. Returns false if the peer is gone.</summary>
    public bool Send(uint type, uint seq, int status, ReadOnlySpan<byte> payload, int fd = -1)
    {
        Span<byte> hdr = stackalloc byte[Proto.HeaderSize];
        BinaryPrimitives.WriteUInt32LittleEndian(hdr, type);
        BinaryPrimitives.WriteUInt32LittleEndian(hdr[4..], (uint)payload.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(hdr[8..], seq);
        BinaryPrimitives.WriteInt32LittleEndian(hdr[12..], status);
        byte* cbuf = stackalloc byte[24];
        fixed (byte* h = hdr)
        fixed (byte* p = payload)
        {
            var iov = stackalloc Native.IoVec[2];
            iov[0] = new Native.IoVec { Base = h, Len = (nuint)Proto.HeaderSize };
            iov[1] = new Native.IoVec { Base = p, Len = (nuint)payload.Length };
            var mh = new Native.MsgHdr { Iov = iov, IovLen = payload.Length > 0 ? 2u : 1u };
            if (fd >= 0)
            {
                *(ulong*)cbuf = 20;                    // CMSG_LEN(sizeof(int))
                *(int*)(cbuf + 8) = Native.SOL_SOCKET;
                *(int*)(cbuf + 12) = Native.SCM_RIGHTS;
                *(int*)(cbuf + 16) = fd;
                mh.Control = cbuf; mh.ControlLen = 24;  // CMSG_SPACE(sizeof(int))
            }
            long total = Proto.HeaderSize + payload.Length, sent = 0;
            while (sent < total)
            {
                nint n = Native.sendmsg(_fd, &mh, Native.MSG_NOSIGNAL);
                if (n < 0 && Native.Errno == Native.EINTR) continue;
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

    static void CloseFd(int fd) { if (fd >= 0) Native.close(fd); }

    /// <summary>Wake a thread blocked in Receive (used at shutdown).</summary>
    public void Shutdown() { if (_fd >= 0) Native.shutdown(_fd, 2); }

    public void Dispose()
    {
        int fd = Interlocked.Exchange(ref _fd, -1);
        if (fd >= 0) Native.close(fd);
    }
}
