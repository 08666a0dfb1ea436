using System.Buffers.Binary;
using System.Text;
using Lab.Linux;

namespace Lab.Daemon;

/// <summary>
/// Notices programs of a lab run that run outside the lab: a statically linked program
/// never loads the shim, so it never connects. The kernel's process connector (netlink,
/// root only) reports every exec on the machine; for a static image whose environment
/// carries this daemon's LAB_CONTROL, the daemon logs it and counts it for its run
/// (`unserved_programs`; `lab run` then says so and fails). This sees the exec of a vfork
/// or posix_spawn child too, which never had a connection of its own. The exe and the
/// environment are read when the event arrives: a static program that has already ended by
/// then slips by. Without the connector, LabDaemon.CheckExec (a connection that ends while its
/// process lives on) is the fallback.
/// </summary>
public sealed unsafe class ExecWatch : IDisposable
{
    const int NETLINK_CONNECTOR = 11, CN_IDX_PROC = 1, CN_VAL_PROC = 1, PROC_CN_MCAST_LISTEN = 1, PROC_EVENT_EXEC = 2;
    const int NLMSG_DONE = 3, AF_NETLINK = 16, SOCK_DGRAM = 2;

    readonly LabDaemon _daemon;
    readonly byte[] _marker;   // "\0LAB_CONTROL=<our socket>\0": a variable after another, or (from 1) the first
    readonly Fd _fd;
    readonly Thread _thread;
    volatile bool _stopping;

    ExecWatch(LabDaemon daemon, string controlPath, Fd fd)
    {
        _daemon = daemon;
        _marker = Encoding.UTF8.GetBytes($"\0LAB_CONTROL={controlPath}\0");
        _fd = fd;
        _thread = new Thread(Loop) { IsBackground = true, Name = "exec watch" };
    }

    /// <summary>Listening, or null (logged) when the process connector is not available.</summary>
    public static ExecWatch? TryStart(LabDaemon daemon, string controlPath)
    {
        var fd = Native.Socket(AF_NETLINK, SOCK_DGRAM | Native.SOCK_CLOEXEC, NETLINK_CONNECTOR);
        if (fd.IsInvalid) { Unavailable("socket"); return null; }
        Span<byte> sa = stackalloc byte[12];   // sockaddr_nl: family, pad, pid 0 (the kernel picks), groups
        BinaryPrimitives.WriteUInt16LittleEndian(sa, AF_NETLINK);
        BinaryPrimitives.WriteUInt32LittleEndian(sa[8..], CN_IDX_PROC);
        Span<byte> msg = stackalloc byte[16 + 20 + 4];   // nlmsghdr, cn_msg, op
        BinaryPrimitives.WriteUInt32LittleEndian(msg, (uint)msg.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(msg[4..], NLMSG_DONE);
        BinaryPrimitives.WriteUInt32LittleEndian(msg[16..], CN_IDX_PROC);
        BinaryPrimitives.WriteUInt32LittleEndian(msg[20..], CN_VAL_PROC);
        BinaryPrimitives.WriteUInt16LittleEndian(msg[32..], 4);
        BinaryPrimitives.WriteUInt32LittleEndian(msg[36..], PROC_CN_MCAST_LISTEN);
        fixed (byte* a = sa)
        fixed (byte* m = msg)
        {
            if (Native.Bind(fd, a, 12) != 0) { Unavailable("bind"); fd.Dispose(); return null; }
            if (Native.Write(fd, m, (nuint)msg.Length) != msg.Length) { Unavailable("listen"); fd.Dispose(); return null; }
        }
        var w = new ExecWatch(daemon, controlPath, fd);
        w._thread.Start();
        return w;
    }

    static void Unavailable(string step) =>
        Log.Info($"the kernel's process connector is not available ({step}: {Errno.StrError(Errno.Last)}): "
            + "only static programs exec'd by a process with its own connection are noticed");

    void Loop()
    {
        var buf = new byte[8192];
        bool overrun = false;
        while (!_stopping)
        {
            int r;
            using (var fd = _fd.Use())
            {
                var p = new Native.PollFd { Fd = fd.Number, Events = Native.POLLIN };
                r = Native.Poll(&p, 1, 500);
            }
            if (r <= 0) continue;
            nint n;
            fixed (byte* b = buf) n = Native.Read(_fd, b, (nuint)buf.Length);
            if (n < 0)
            {
                // ENOBUFS: the machine exec'd faster than we read; some events are lost
                if (!overrun) Log.Info($"exec watch: {Errno.StrError(Errno.Last)}: some execs went unseen");
                overrun = true;
                continue;
            }
            for (int off = 0; off + 16 <= n;)
            {
                int len = (int)BinaryPrimitives.ReadUInt32LittleEndian(buf.AsSpan(off));
                if (len < 16 || off + len > n) break;
                if (len >= 60 && BinaryPrimitives.ReadUInt32LittleEndian(buf.AsSpan(off + 36)) == PROC_EVENT_EXEC)
                {
                    int pid = BinaryPrimitives.ReadInt32LittleEndian(buf.AsSpan(off + 56));   // process_tgid
                    try { Check(pid); }
                    catch (Exception e) { Log.Error($"exec watch, pid {pid}: {e.GetType().Name}: {e.Message}"); }
                }
                off += (len + 3) & ~3;
            }
        }
    }

    void Check(int pid)
    {
        if (Elf.IsStatic($"/proc/{pid}/exe") != true) return;   // most execs end here
        byte[] env;
        try { env = File.ReadAllBytes($"/proc/{pid}/environ"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return; }
        var span = env.AsSpan();
        if (!span.StartsWith(_marker.AsSpan(1)) && span.IndexOf(_marker) < 0) return;
        ulong run = 0;
        const string key = "LAB_RUN_ID=";
        foreach (var v in Encoding.UTF8.GetString(env).Split('\0'))
            if (v.StartsWith(key, StringComparison.Ordinal) && ulong.TryParse(v.AsSpan(key.Length), out var id)) run = id;
        string exe = "?";
        try { exe = new FileInfo($"/proc/{pid}/exe").LinkTarget ?? "?"; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        _daemon.NoteUnserved(pid, exe, run);
    }

    public void Dispose()
    {
        _stopping = true;
        _thread.Join(TimeSpan.FromSeconds(2));
        _fd.Dispose();
    }
}
