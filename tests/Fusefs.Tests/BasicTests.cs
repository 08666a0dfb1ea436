using Xunit;

namespace Lab.Tests.Fusefs;

public class BasicTests
{
    [KernelFact]
    public void Ls_stat_and_cat_show_the_backing_files()
    {
        using var m = new TestMount();
        File.WriteAllText(m.B("hello.txt"), "hello, lab\n");
        Directory.CreateDirectory(m.B("sub"));
        File.WriteAllBytes(m.B("sub/data.bin"), Enumerable.Range(0, 10000).Select(i => (byte)i).ToArray());

        var ls = Sh.Ok("ls -l", m.MountPoint);
        Assert.Contains("hello.txt", ls);
        Assert.Contains("sub", ls);
        Assert.Equal("hello, lab\n", Sh.Ok("cat hello.txt", m.MountPoint));
        Assert.Equal(File.ReadAllBytes(m.B("sub/data.bin")), File.ReadAllBytes(m.M("sub/data.bin")));
        // st_ino on the mount is the backing file's.
        var inoM = Sh.Ok("stat -c %i hello.txt", m.MountPoint).Trim();
        var inoB = Sh.Ok("stat -c %i hello.txt", m.Backing).Trim();
        Assert.Equal(inoB, inoM);
        Assert.Equal("11", Sh.Ok("stat -c %s hello.txt", m.MountPoint).Trim());
    }
}
