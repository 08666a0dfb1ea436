using System.Text;
using Mono.Unix.Native;
using Xunit;

namespace Lab.Tests.Fusefs;

/// <summary>Issue 12 items 3 and 4 as a user meets them: device nodes on the mount, an ACL that grants
/// another user write, a write by another user to a set-user-ID file.</summary>
public class DeviceAclTests
{
    private static string Posixops => Path.Combine(FindRoot(), "build", "posixops");

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Lab.sln"))) return d.FullName;
        throw new InvalidOperationException("Lab.sln not found above " + AppContext.BaseDirectory);
    }

    // glibc's dev_t encoding (sys/sysmacros.h).
    private static ulong MakeDev(ulong major, ulong minor) =>
        ((major & 0xfff) << 8) | (minor & 0xff) | ((major & ~0xfffUL) << 32) | ((minor & ~0xffUL) << 12);
    private static uint Major(ulong dev) => (uint)(((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfffUL));
    private static uint Minor(ulong dev) => (uint)((dev & 0xff) | ((dev >> 12) & ~0xffUL));

    [KernelFact]
    public void Device_nodes_are_made_with_their_numbers_and_the_nodev_mount_refuses_to_open_them()
    {
        using var m = new TestMount();
        // The mount itself is nodev (and nosuid): the kernel refuses to open a device through it.
        var line = File.ReadAllLines("/proc/self/mountinfo").Single(l => l.Split(' ')[4] == m.MountPoint);
        Assert.Contains("nodev", line.Split(' ')[5].Split(','));
        Assert.Contains("nosuid", line.Split(' ')[5].Split(','));
        var modeC = FilePermissions.S_IFCHR | (FilePermissions)0x1B6;
        var modeB = FilePermissions.S_IFBLK | (FilePermissions)0x180;
        Assert.Equal(0, Syscall.mknod(m.M("null"), modeC, MakeDev(1, 3)));
        Assert.Equal(0, Syscall.mknod(m.M("zero"), modeC, MakeDev(1, 5)));
        Assert.Equal(0, Syscall.mknod(m.M("loop"), modeB, MakeDev(7, 0)));
        Assert.Equal(0, Syscall.mknod(m.M("big"), modeC, MakeDev(300, 70000)));
        foreach (var (name, type, major, minor) in new[] { ("null", FilePermissions.S_IFCHR, 1u, 3u), ("zero", FilePermissions.S_IFCHR, 1u, 5u),
                                                          ("loop", FilePermissions.S_IFBLK, 7u, 0u), ("big", FilePermissions.S_IFCHR, 300u, 70000u) })
        {
            foreach (var path in new[] { m.M(name), m.B(name) })
            {
                Assert.Equal(0, Syscall.lstat(path, out var st));
                Assert.Equal(type, st.st_mode & FilePermissions.S_IFMT);
                Assert.Equal(major, Major(st.st_rdev));
                Assert.Equal(minor, Minor(st.st_rdev));
            }
            // Measured: every open of a device node on the mount is EACCES (may_open_dev: the mount is nodev).
            foreach (var flags in new[] { OpenFlags.O_RDONLY, OpenFlags.O_WRONLY, OpenFlags.O_RDWR })
            {
                Assert.Equal(-1, Syscall.open(m.M(name), flags));
                Assert.Equal(Errno.EACCES, Stdlib.GetLastError());
            }
        }
        // The same node in the backing directory (not nodev) is the device: it reads /dev/zero's zeros.
        int fd = Syscall.open(m.B("zero"), OpenFlags.O_RDONLY);
        Assert.True(fd >= 0);
        var buf = new byte[8];
        buf[0] = 1;
        unsafe { fixed (byte* p = buf) Assert.Equal(8, (int)Syscall.read(fd, p, 8)); }
        Syscall.close(fd);
        Assert.Equal(new byte[8], buf);
        // A caller without CAP_MKNOD is refused by the kernel before we hear of it.
        var o = Sh.Ok($"printf 'case u\\n@A mknod c c 0644 1 3\\n@A mknod b b 0644 7 0\\n@A mknod p p 0644\\n' | {Posixops} {m.MountPoint}", m.Root);
        Assert.Equal("== u\n@A mknod c c 0644 1 3: EPERM\n@A mknod b b 0644 7 0: EPERM\n@A mknod p p 0644: ok\n", o);
    }

    [KernelFact]
    public void An_acl_that_grants_uid_65534_write_lets_it_append_and_its_write_clears_suid()
    {
        using var m = new TestMount();
        Assert.True(m.Server.AclsEnforced);
        Assert.Equal(0, Syscall.chmod(m.Root, (FilePermissions)0x1ED));
        Assert.Equal(0, Syscall.chmod(m.Backing, (FilePermissions)0x1ED));
        File.WriteAllText(m.M("f"), "0");
        File.WriteAllText(m.M("s"), "0");
        Assert.Equal(0, Syscall.chmod(m.M("f"), (FilePermissions)0x1A4)); // 0644
        Assert.Equal(0, Syscall.chmod(m.M("s"), (FilePermissions)0x9FF)); // 04777
        // setfacl -m u:65534:rw f, written as the attribute setfacl writes (version 2; tag, perm, id).
        var acl = new List<byte>(BitConverter.GetBytes(2u));
        foreach (var (tag, perm, id) in new (ushort, ushort, uint)[] { (1, 6, uint.MaxValue), (2, 6, 65534), (4, 4, uint.MaxValue), (0x10, 6, uint.MaxValue), (0x20, 4, uint.MaxValue) })
        {
            acl.AddRange(BitConverter.GetBytes(tag));
            acl.AddRange(BitConverter.GetBytes(perm));
            acl.AddRange(BitConverter.GetBytes(id));
        }
        Assert.Equal(0, Syscall.setxattr(m.M("f"), "system.posix_acl_access", acl.ToArray(), XattrFlags.XATTR_AUTO));
        string As65534(string cmd) => $"setpriv --reuid 65534 --regid 65534 --clear-groups sh -c '{cmd}'";
        var r = Sh.Run(As65534("echo x >> f") + "; echo rc=$?", m.MountPoint);
        Assert.Equal("rc=0\n", r.Out);
        Assert.Equal("0x\n", File.ReadAllText(m.B("f")));
        r = Sh.Run(As65534("echo x >> s") + "; echo rc=$?", m.MountPoint);
        Assert.Equal("rc=0\n", r.Out);
        Assert.Equal(0, Syscall.stat(m.B("s"), out var st));
        Assert.Equal((FilePermissions)0x1FF, st.st_mode & (FilePermissions)0xFFF); // 04777 → 0777
    }
}
