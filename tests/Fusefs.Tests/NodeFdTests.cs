using Mono.Unix.Native;
using Xunit;

namespace Lab.Tests.Fusefs;

/// <summary>
/// Node descriptors are held by need (issue 12 item 1): however many inodes the kernel remembers, at
/// most the cap stay open (plus the root's); a closed one is reopened from its file handle and is the
/// same file; an open file keeps its own, so an unlinked open file still answers.
/// </summary>
public class NodeFdTests
{
    private const int Cap = 16, Files = 600;

    /// <summary>The node fds open once every file is released: a node with an open handle keeps its fd
    /// over the cap, and the kernel sends RELEASE after close() has returned (seen: 18 = cap + root + the
    /// last file written, in CI).</summary>
    private static int Settled(TestMount m)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (m.Fs.Counts().Handles != 0 && DateTime.UtcNow < deadline) Thread.Sleep(20);
        Assert.Equal(0, m.Fs.Counts().Handles);
        return m.Fs.OpenNodeFds();
    }

    [KernelFact]
    public void Node_descriptors_stay_within_the_cap_and_each_reopens_its_own_file()
    {
        using var m = new TestMount(maxNodeFds: Cap);
        Assert.Equal(Cap, m.Fs.NodeFdLimit);
        for (int i = 0; i < Files; i++) File.WriteAllText(m.M($"f{i}"), $"file {i}");
        Assert.InRange(Settled(m), 1, Cap + 1);
        Assert.Equal(Files + 1, m.Fs.Counts().Nodes); // the kernel still knows them all (and the root)

        for (int i = 0; i < Files; i++)
        {
            Assert.Equal($"file {i}", File.ReadAllText(m.M($"f{i}")));
            Assert.Equal(0, Syscall.chmod(m.M($"f{i}"), (FilePermissions)(0x1A4 + (i % 2) * 0x40)));
        }
        for (int i = 0; i < Files; i++)
        {
            Assert.Equal(0, Syscall.stat(m.B($"f{i}"), out var st));
            Assert.Equal(0x1A4u + (uint)(i % 2) * 0x40, (uint)st.st_mode & 0xFFF);
        }
        Assert.InRange(Settled(m), 1, Cap + 1);

        // An open file keeps its fd: unlinked while open, then the LRU churned, it still reads, writes, stats.
        using (var fs = new FileStream(m.M("f0"), FileMode.Open, FileAccess.ReadWrite))
        {
            File.Delete(m.M("f0"));
            for (int i = 1; i < 4 * Cap; i++) Assert.Equal($"file {i}", File.ReadAllText(m.M($"f{i}")));
            fs.Seek(0, SeekOrigin.End);
            fs.Write("!"u8);
            fs.Flush();
            Thread.Sleep(1100); // past the attribute timeout: the size comes from the daemon
            Assert.Equal("file 0!".Length, fs.Length);
            fs.Seek(0, SeekOrigin.Begin);
            var buf = new byte[16];
            Assert.Equal("file 0!", System.Text.Encoding.UTF8.GetString(buf, 0, fs.Read(buf)));
        }

        // A file replaced on the backing side (ext4 gives the new one the old number at once) is the new file.
        Assert.Equal(0, Syscall.stat(m.M("f1"), out var old));
        File.Delete(m.B("f1"));
        File.WriteAllText(m.B("f1"), "new one");
        Thread.Sleep(1100); // past the entry timeout: the kernel looks the name up again
        Assert.Equal("new one", File.ReadAllText(m.M("f1")));
        Assert.Equal(0, Syscall.stat(m.M("f1"), out var now));
        Assert.Equal(7, now.st_size);
        Assert.Equal(Files, Directory.GetFileSystemEntries(m.MountPoint).Length); // f1..f599 and .lab
    }
}
