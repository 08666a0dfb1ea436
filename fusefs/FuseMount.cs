namespace Lab.Fusefs;

/// <summary>Who makes the mount: mount(2) ourselves (root), or the setuid helper fusermount3.</summary>
public enum FuseMountMethod { Auto, Syscall, Fusermount }

/// <summary>How <see cref="FuseServer.Mount"/> mounts.</summary>
public sealed class FuseMountOptions
{
    /// <summary>Auto: mount(2) as root, fusermount3 otherwise.</summary>
    public FuseMountMethod Method { get; init; } = FuseMountMethod.Auto;
    /// <summary>Let users other than the mounter use the mount (mount option allow_other).</summary>
    public bool AllowOther { get; init; } = true;
    /// <summary>Let the kernel check permissions from the attributes (mount option default_permissions).</summary>
    public bool DefaultPermissions { get; init; } = true;
}

/// <summary>A mount that cannot be made, with one message saying why.</summary>
public sealed class FuseMountException : Exception
{
    public FuseMountException(string message) : base(message) { }
}

/// <summary>Every way a session's mount is made, checked and undone: mount(2) as root, fusermount3 otherwise.</summary>
internal static unsafe class FuseMounter
{
    /// <summary>Checks and mounts <paramref name="mountpoint"/>; returns the /dev/fuse fd of the new session.</summary>
    public static Fd Mount(string mountpoint, FuseMountOptions opts, out string mp, out bool viaFusermount)
    {
        mp = "";
        viaFusermount = false;
        if (string.IsNullOrEmpty(mountpoint)) throw new FuseMountException("mount point is empty");
        mp = Path.GetFullPath(mountpoint).TrimEnd('/');
        if (mp.Length == 0) mp = "/";
        CheckMountPoint(mp);
        var method = opts.Method;
        if (method == FuseMountMethod.Auto) method = Native.GetEuid() == 0 ? FuseMountMethod.Syscall : FuseMountMethod.Fusermount;
        viaFusermount = method == FuseMountMethod.Fusermount;
        if (viaFusermount) return Fusermount.Mount(mp, opts);
        var fd = Native.Open("/dev/fuse", Native.O_RDWR | Native.O_CLOEXEC | Native.O_NONBLOCK, 0);
        if (fd.IsInvalid)
            throw new FuseMountException($"/dev/fuse cannot be opened: {Errno.StrError(Errno.Last)}");
        string data = $"fd={fd.Number},rootmode=40000,user_id={Native.GetEuid()},group_id={Native.GetEgid()}";
        if (opts.AllowOther) data += ",allow_other";
        if (opts.DefaultPermissions) data += ",default_permissions";
        if (Native.Mount("lab", mp, "fuse.lab", Native.MS_NOSUID | Native.MS_NODEV, data) != 0)
        {
            int e = Errno.Last;
            fd.Dispose();
            throw new FuseMountException($"mount of {mp} failed: {Errno.StrError(e)}");
        }
        return fd;
    }

    /// <summary>Detaches the mount; a user who is refused (EPERM) asks fusermount3, which made it.</summary>
    public static void Unmount(string mp, bool viaFusermount)
    {
        if (Native.Umount2(mp, Native.MNT_DETACH) != 0 // EINVAL: someone else already unmounted
            && Errno.Last == Errno.EPERM && viaFusermount)
            Fusermount.Unmount(mp);
    }

    private static void CheckMountPoint(string mp)
    {
        Native.Statx st, parent;
        if (Native.StatxPath(Fd.Cwd, mp, 0, Native.STATX_BASIC_STATS, &st) != 0)
        {
            int e = Errno.Last;
            throw new FuseMountException(e switch
            {
                Errno.ENOENT => $"mount point {mp} does not exist",
                Errno.ENOTDIR => $"mount point {mp} is not a directory",
                Errno.ENOTCONN => $"mount point {mp} is a dead FUSE mount (Transport endpoint is not connected); FuseServer.ClearStale clears it",
                _ => $"mount point {mp} cannot be examined: {Errno.StrError(e)}",
            });
        }
        if ((st.Mode & 0xF000) != 0x4000) throw new FuseMountException($"mount point {mp} is not a directory");
        bool listed = MountInfo.Read().Exists(m => m.MountPoint == mp);
        string parentPath = Path.GetDirectoryName(mp) ?? "/";
        bool otherDev = mp != "/" && Native.StatxPath(Fd.Cwd, parentPath, 0, Native.STATX_BASIC_STATS, &parent) == 0
            && parent.Dev != st.Dev;
        if (listed || otherDev || mp == "/") throw new FuseMountException($"mount point {mp} is already a mount point");
    }

    /// <summary>See <see cref="FuseServer.ClearStale"/>.</summary>
    public static bool ClearStale(string mountpoint)
    {
        string mp = Path.GetFullPath(mountpoint).TrimEnd('/');
        bool cleared = false;
        for (int round = 0; round < 8; round++) // stacked dead mounts come off one at a time
        {
            if (!IsDead(mp)) break;
            if (Native.Umount2(mp, Native.MNT_DETACH) != 0) break;
            cleared = true;
        }
        return cleared;
    }

    private static bool IsDead(string mp)
    {
        Native.Statx st;
        if (Native.StatxPath(Fd.Cwd, mp, 0, Native.STATX_BASIC_STATS, &st) != 0)
            return Errno.Last == Errno.ENOTCONN;
        // stat may be answered from cached attributes; statfs always goes to the server.
        if (!MountInfo.Read().Exists(m => m.MountPoint == mp && m.FsType.StartsWith("fuse", StringComparison.Ordinal)))
            return false;
        Native.StatFs sf;
        return Native.StatFsPath(mp, &sf) != 0 && Errno.Last == Errno.ENOTCONN;
    }
}

/// <summary>
/// Mounting and unmounting through fusermount3 (libfuse's protocol): it gets one end of a socket pair in
/// _FUSE_COMMFD, opens /dev/fuse, mounts, and sends the device fd back with SCM_RIGHTS.
/// </summary>
internal static unsafe class Fusermount
{
    public static string Path =>
        new[] { "/usr/bin/fusermount3", "/bin/fusermount3", "/usr/local/bin/fusermount3" }.FirstOrDefault(File.Exists)
        ?? throw new FuseMountException("fusermount3 is not installed (Debian package fuse3); mounting without root needs it");

    /// <summary>Options as fusermount3 takes them (it adds fd, rootmode, user_id, group_id itself).</summary>
    public static string Options(FuseMountOptions opts, uint euid)
    {
        var o = new List<string> { "fsname=lab", "subtype=lab" };
        // Without user_allow_other in /etc/fuse.conf fusermount3 refuses allow_other from a user: such a
        // mount serves its owner only.
        if (opts.AllowOther && (euid == 0 || UserAllowOther())) o.Add("allow_other");
        if (opts.DefaultPermissions) o.Add("default_permissions");
        return string.Join(',', o);
    }

    private static bool UserAllowOther()
    {
        try { return File.ReadLines("/etc/fuse.conf").Any(l => l.Trim() == "user_allow_other"); }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    public static Fd Mount(string mp, FuseMountOptions opts)
    {
        string exe = Path;
        int* sv = stackalloc int[2];
        if (Native.SocketPair(Native.AF_UNIX, Native.SOCK_STREAM, 0, sv) != 0)
            throw new FuseMountException($"socketpair: {Errno.StrError(Errno.Last)}");
        var ours = new Fd(sv[0]);
        Fd? theirs = new(sv[1]);
        // Only the helper's end is inherited; ours closes on exec of anything else started meanwhile.
        Native.Fcntl(ours, Native.F_SETFD, Native.FD_CLOEXEC);
        Fd? dev = null;
        try
        {
            var psi = new System.Diagnostics.ProcessStartInfo(exe)
            {
                RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false,
            };
            psi.ArgumentList.Add("-o");
            psi.ArgumentList.Add(Options(opts, Native.GetEuid()));
            psi.ArgumentList.Add("--");
            psi.ArgumentList.Add(mp);
            psi.Environment["_FUSE_COMMFD"] = theirs.Number.ToString(System.Globalization.CultureInfo.InvariantCulture);
            using var p = System.Diagnostics.Process.Start(psi) ?? throw new FuseMountException($"{exe} did not start");
            theirs.Dispose();
            theirs = null;
            var err = p.StandardError.ReadToEndAsync();
            dev = ReceiveFd(ours); // null when the helper ends without sending one
            if (!p.WaitForExit(30_000)) { p.Kill(); throw new FuseMountException($"{exe} did not finish"); }
            p.WaitForExit();
            if (p.ExitCode != 0 || dev == null)
                throw new FuseMountException($"mount of {mp} by fusermount3 failed: {err.Result.Trim()}");
            Native.Fcntl(dev, Native.F_SETFD, Native.FD_CLOEXEC);
            Native.Fcntl(dev, Native.F_SETFL, Native.O_RDWR | Native.O_NONBLOCK);
            var result = dev;
            dev = null;
            return result;
        }
        finally
        {
            dev?.Dispose();
            theirs?.Dispose();
            ours.Dispose();
        }
    }

    private static Fd? ReceiveFd(Fd sock)
    {
        byte b;
        var iov = new Native.IoVec { Base = &b, Len = 1 };
        byte* control = stackalloc byte[64];
        var msg = new Native.MsgHdr { Iov = &iov, IovLen = 1, Control = control, ControlLen = 64 };
        while (true)
        {
            nint n = Native.RecvMsg(sock, &msg, 0);
            if (n < 0 && Errno.Last == Errno.EINTR) { msg.ControlLen = 64; continue; }
            if (n <= 0) return null;
            break;
        }
        // struct cmsghdr { size_t len; int level; int type; } then the data, at 16.
        if (msg.ControlLen < 20) return null;
        ulong len = *(ulong*)control;
        int level = *(int*)(control + 8), type = *(int*)(control + 12);
        if (len < 20 || level != Native.SOL_SOCKET || type != Native.SCM_RIGHTS) return null;
        return new Fd(*(int*)(control + 16));
    }

    /// <summary>fusermount3 -u -z: how a user takes down a mount fusermount3 made.</summary>
    public static void Unmount(string mp)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(Path)
        {
            RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false,
        };
        foreach (var a in new[] { "-u", "-z", "--", mp }) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi);
        if (p != null && !p.WaitForExit(30_000)) p.Kill();
    }
}

/// <summary>Reads /proc/self/mountinfo.</summary>
internal static class MountInfo
{
    public readonly record struct Entry(string MountPoint, string FsType, string Source);

    public static List<Entry> Read()
    {
        var list = new List<Entry>();
        foreach (var line in File.ReadAllLines("/proc/self/mountinfo"))
        {
            // id parent major:minor root mountpoint options [optional...] - fstype source superopts
            var f = line.Split(' ');
            int dash = Array.IndexOf(f, "-");
            if (f.Length < 5 || dash < 0 || dash + 2 >= f.Length) continue;
            list.Add(new Entry(Unescape(f[4]), f[dash + 1], Unescape(f[dash + 2])));
        }
        return list;
    }

    // The kernel writes space, tab, newline and backslash as \ooo.
    private static string Unescape(string s)
    {
        if (!s.Contains('\\')) return s;
        var sb = new System.Text.StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && i + 3 < s.Length
                && IsOct(s[i + 1]) && IsOct(s[i + 2]) && IsOct(s[i + 3]))
            {
                sb.Append((char)((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
                i += 3;
            }
            else sb.Append(s[i]);
        }
        return sb.ToString();
    }

    private static bool IsOct(char c) => c >= '0' && c <= '7';
}
