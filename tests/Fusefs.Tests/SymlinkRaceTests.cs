using System.Runtime.InteropServices;
using System.Text;
using Mono.Unix.Native;
using Xunit;
using Xunit.Abstractions;

namespace Lab.Tests.Fusefs;

/// <summary>
/// A backing-side attacker (issue 12 item 2): while the mount makes and changes a name, a thread on the
/// backing side swaps (RENAME_EXCHANGE) a symlink to a root-owned 0600 file outside the backing dir in
/// for that name, as fast as it can. The daemon is root: whatever it does to the name must not reach the
/// file. The mount side itself never follows a symlink (lchown, lsetxattr, O_NOFOLLOW...), so any change
/// to the file or its directory is the daemon's. Each operation that takes a name in the backing dir gets
/// its run; the old code's fchmodat after mknodat / mkdirat made the file 0755 within a second.
/// </summary>
public class SymlinkRaceTests(ITestOutputHelper output)
{
    [DllImport("libc", SetLastError = true)]
    private static extern int renameat2(int olddirfd, string oldpath, int newdirfd, string newpath, uint flags);
    private const int AT_FDCWD = -100;
    private const uint RENAME_EXCHANGE = 2;
    private const FilePermissions Mode755 = (FilePermissions)0x1ED;

    // How long each operation is raced: the old code failed mkdir 10 of 10 times (0.1-2 s), mknod 9 of 10 (0.0-3.2 s; one went 6 s unhurt).
    private static readonly TimeSpan RaceFor = TimeSpan.FromSeconds(8);

    public static TheoryData<string> Ops => new()
    {
        "mknod", "mkdir", "create", "create-existing", "symlink", "link", "rename", "unlink", "attributes", "lookup",
    };

    [KernelTheory]
    [MemberData(nameof(Ops))]
    public void A_symlink_swapped_in_on_the_backing_side_is_never_followed(string op)
    {
        using var m = new TestMount(threads: 4);
        var outside = Path.Combine(Path.GetTempPath(), "fsrace-outside-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(outside);
        try
        {
            var secret = Path.Combine(outside, "secret");
            File.WriteAllText(secret, "root's secret\n");
            Assert.Equal(0, Syscall.chmod(secret, (FilePermissions)0x180)); // 0600
            Assert.Equal(0, Syscall.lsetxattr(secret, "user.k", "v"u8.ToArray(), XattrFlags.XATTR_AUTO));
            Thread.Sleep(20); // a later change gets another ctime
            string before = State(outside, secret);

            File.WriteAllText(m.M("base"), "base");
            string name = m.M("N"), backingName = m.B("N"), atk = m.B(".atk");
            Assert.Equal(0, Syscall.symlink(secret, atk));
            long exchanges = 0, iterations = 0;
            bool stop = false;
            var attacker = new Thread(() =>
            {
                while (!Volatile.Read(ref stop))
                {
                    if (renameat2(AT_FDCWD, atk, AT_FDCWD, backingName, RENAME_EXCHANGE) != 0) continue;
                    exchanges++;
                    // .atk holds what the mount made: clear it and arm the next symlink.
                    if (Syscall.unlink(atk) != 0) Syscall.rmdir(atk);
                    Syscall.symlink(secret, atk);
                }
            }) { IsBackground = true };
            attacker.Start();
            string after = before;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            try
            {
                while (clock.Elapsed < RaceFor)
                {
                    Step(op, m, name);
                    if (++iterations % 64 == 0 && (after = State(outside, secret)) != before) break;
                }
            }
            finally
            {
                Volatile.Write(ref stop, true);
                attacker.Join();
            }
            after = State(outside, secret);
            output.WriteLine($"{op}: {iterations} operations, {exchanges} swaps in {clock.Elapsed.TotalSeconds:F1} s");
            Assert.True(exchanges > 0, "the attacker never swapped a name: the race did not run");
            Assert.True(before == after, $"{op} changed what is outside the backing dir after {iterations} operations, {exchanges} swaps:\n{before}\n---\n{after}");
        }
        finally
        {
            Directory.Delete(outside, true);
        }
    }

    /// <summary>One operation on the name through the mount, and its undoing; errors are expected (the
    /// attacker's symlink holds the name part of the time) and ignored: only the outside is checked.</summary>
    private static unsafe void Step(string op, TestMount m, string name)
    {
        switch (op)
        {
            case "mknod":
                Syscall.mkfifo(name, Mode755);
                break;
            case "mkdir":
                Syscall.mkdir(name, Mode755);
                Syscall.rmdir(name);
                break;
            case "create":
                Syscall.close(Syscall.open(name, OpenFlags.O_CREAT | OpenFlags.O_EXCL | OpenFlags.O_WRONLY, Mode755));
                break;
            case "create-existing":
                Syscall.close(Syscall.open(name, OpenFlags.O_CREAT | OpenFlags.O_WRONLY | OpenFlags.O_TRUNC | OpenFlags.O_NOFOLLOW, Mode755));
                break;
            case "symlink":
                Syscall.symlink("elsewhere", name);
                break;
            case "link":
                Syscall.link(m.M("base"), name);
                break;
            case "rename":
                Syscall.close(Syscall.open(m.M("src"), OpenFlags.O_CREAT | OpenFlags.O_WRONLY | OpenFlags.O_NOFOLLOW, Mode755));
                Syscall.rename(m.M("src"), name);
                break;
            case "unlink":
                Syscall.close(Syscall.open(name, OpenFlags.O_CREAT | OpenFlags.O_WRONLY | OpenFlags.O_NOFOLLOW, Mode755));
                break;
            case "attributes":
            {
                int fd = Syscall.open(name, OpenFlags.O_CREAT | OpenFlags.O_RDWR | OpenFlags.O_NOFOLLOW, Mode755);
                if (fd >= 0)
                {
                    Syscall.fchmod(fd, Mode755);
                    Syscall.fchown(fd, 1, 1);
                    Syscall.ftruncate(fd, 3);
                    byte x = (byte)'x';
                    Syscall.pwrite(fd, &x, 1, 0);
                    Syscall.fsetxattr(fd, "user.a", "1"u8.ToArray(), XattrFlags.XATTR_AUTO);
                    Syscall.futimens(fd, [new Timespec { tv_sec = 1, tv_nsec = 0 }, new Timespec { tv_sec = 1, tv_nsec = 0 }]);
                    Syscall.close(fd);
                }
                // By name, never following: the kernel looks the name up again, so the daemon sees each swap.
                Syscall.lchown(name, 2, 2);
                Syscall.lsetxattr(name, "user.b", "2"u8.ToArray(), XattrFlags.XATTR_AUTO);
                Syscall.lgetxattr(name, "user.b", out byte[] _);
                Syscall.llistxattr(name, out string[] _);
                Syscall.lremovexattr(name, "user.b");
                Syscall.utimensat(AT_FDCWD, name, [new Timespec { tv_sec = 2 }, new Timespec { tv_sec = 2 }], AtFlags.AT_SYMLINK_NOFOLLOW);
                Syscall.lstat(name, out _);
                var buf = new byte[256];
                Syscall.readlink(name, buf);
                break;
            }
            case "lookup":
                Syscall.close(Syscall.open(name, OpenFlags.O_CREAT | OpenFlags.O_WRONLY | OpenFlags.O_NOFOLLOW, Mode755));
                Thread.Sleep(1); // the attacker's turn
                Syscall.lstat(name, out _);
                Syscall.readlink(name, new byte[256]);
                Directory.GetFileSystemEntries(m.MountPoint); // READDIRPLUS: a lookup of every name
                break;
            default:
                throw new ArgumentException(op);
        }
        // Undo (the attacker's symlink may be what goes): never through a symlink either.
        if (Syscall.unlink(name) != 0) Syscall.rmdir(name);
    }

    /// <summary>Everything about the outside file a follow could change, and the outside dir's names.</summary>
    private static string State(string dir, string secret)
    {
        var sb = new StringBuilder();
        Assert.Equal(0, Syscall.lstat(secret, out var st));
        sb.Append($"mode {Convert.ToString((uint)st.st_mode, 8)} uid {st.st_uid} gid {st.st_gid} nlink {st.st_nlink} size {st.st_size} ");
        sb.Append($"mtime {st.st_mtime}.{st.st_mtime_nsec} ctime {st.st_ctime}.{st.st_ctime_nsec}\n");
        sb.Append("content ").Append(File.ReadAllText(secret)).Append('\n');
        Assert.True(Syscall.llistxattr(secret, out string[] names) >= 0);
        foreach (var n in names.Order())
        {
            Syscall.lgetxattr(secret, n, out byte[] v);
            sb.Append($"xattr {n}={Encoding.UTF8.GetString(v ?? [])}\n");
        }
        sb.Append("dir ").AppendJoin(',', Directory.GetFileSystemEntries(dir).Select(Path.GetFileName).Order());
        return sb.ToString();
    }
}

/// <summary>A theory that needs a kernel FUSE mount (see <see cref="KernelFactAttribute"/>).</summary>
public sealed class KernelTheoryAttribute : TheoryAttribute
{
    public KernelTheoryAttribute()
    {
        if (Kernel.Missing is { } why && !Kernel.Required)
            Skip = $"needs a kernel FUSE mount: {why} (set LAB_REQUIRE_KERNEL=1 to make this a failure)";
    }
}
