using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Text;
using Lab.Fusefs;
using Mono.Unix.Native;
using Xunit;

namespace Lab.Tests.Fusefs;

/// <summary>The transport: random frames, notifications, mounting through fusermount3.</summary>
public class TransportTests
{
    [KernelFact]
    public void Thousands_of_random_frames_never_crash_and_every_answer_is_well_formed()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("keep"), "kept");
        Directory.CreateDirectory(m.M("sub"));
        var rnd = new Random(20240611);
        var names = new[] { "keep", "sub", "new", ".lab", "..", ".", "a/b", new string('n', 300), "" };
        int replies = 0;
        for (int i = 0; i < 5000; i++)
        {
            uint opcode = (uint)(rnd.Next(6) == 0 ? rnd.Next(0, 5000) : rnd.Next(1, 53));
            if (opcode is 38 or 26) opcode = 3; // DESTROY would end the session; INIT is answered once
            int bodyLen = rnd.Next(4) switch { 0 => 0, 1 => rnd.Next(1, 16), 2 => rnd.Next(16, 160), _ => rnd.Next(160, 5000) };
            var body = new byte[bodyLen];
            rnd.NextBytes(body);
            if (bodyLen > 0 && rnd.Next(2) == 0)
            {
                // Often a plausible name at some offset, so name parsing paths are reached.
                var n = Encoding.UTF8.GetBytes(names[rnd.Next(names.Length)] + "\0");
                int at = rnd.Next(0, Math.Max(1, bodyLen - n.Length));
                n.AsSpan(0, Math.Min(n.Length, bodyLen - at)).CopyTo(body.AsSpan(at));
            }
            ulong node = rnd.Next(5) switch { 0 => 1, 1 => 2, 2 => 3, 3 => (ulong)rnd.NextInt64(), _ => (1UL << 32) + (ulong)rnd.Next(4) };
            var frame = new byte[40 + bodyLen];
            int len = rnd.Next(20) == 0 ? rnd.Next(0, 100) : frame.Length; // sometimes the length lies
            BinaryPrimitives.WriteUInt32LittleEndian(frame, (uint)len);
            BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(4), opcode);
            BinaryPrimitives.WriteUInt64LittleEndian(frame.AsSpan(8), (ulong)i + 1000);
            BinaryPrimitives.WriteUInt64LittleEndian(frame.AsSpan(16), node);
            BinaryPrimitives.WriteUInt16LittleEndian(frame.AsSpan(36), (ushort)(rnd.Next(10) == 0 ? rnd.Next(0, 4) : 0)); // total_extlen
            body.CopyTo(frame, 40);
            int cut = rnd.Next(15) == 0 ? rnd.Next(0, frame.Length) : frame.Length; // truncated frames
            var reply = m.Server.DispatchForTest(frame.AsSpan(0, cut));
            if (reply.Length == 0) continue;
            replies++;
            Assert.True(reply.Length >= 16, $"frame {i}: a reply of {reply.Length} bytes");
            Assert.Equal((uint)reply.Length, BinaryPrimitives.ReadUInt32LittleEndian(reply));
            Assert.Equal((ulong)i + 1000, BinaryPrimitives.ReadUInt64LittleEndian(reply.AsSpan(8)));
            int err = -BinaryPrimitives.ReadInt32LittleEndian(reply.AsSpan(4));
            Assert.InRange(err, 0, 133);
            if (err != 0) Assert.Equal(16, reply.Length);
        }
        Assert.True(replies > 4000, $"only {replies} replies");
        // The mount still works, and nothing was created outside the backing directory.
        Assert.Equal("fresh", Sh.Ok("echo -n fresh > fresh.txt && cat fresh.txt", m.MountPoint));
        Assert.Equal(0, Sh.Run("ls -la . sub > /dev/null", m.MountPoint).Exit);
        Assert.Equal(new[] { "backing", "mnt" }, Directory.GetFileSystemEntries(m.Root).Select(Path.GetFileName).Order());
    }

    [KernelFact]
    public void Inode_notification_refreshes_a_kernel_mapping_after_a_change_behind_its_back()
    {
        using var m = new TestMount();
        File.WriteAllBytes(m.M("n"), Enumerable.Repeat((byte)'A', 8192).ToArray());
        Assert.Equal(0, Syscall.stat(m.M("n"), out var st));
        // A mapping of the mount's file without the lab uses the kernel's page cache for it.
        using var mmf = MemoryMappedFile.CreateFromFile(m.M("n"), FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        using var view = mmf.CreateViewAccessor(0, 8192, MemoryMappedFileAccess.Read);
        Assert.Equal((byte)'A', view.ReadByte(4096));
        using (var f = new FileStream(m.B("n"), FileMode.Open, FileAccess.Write)) { f.Position = 4096; f.Write("B"u8); }
        Assert.Equal((byte)'A', view.ReadByte(4096)); // the kernel does not know yet
        Assert.True(m.Fs.NotifyInvalidate(st.st_ino, 4096, 4096));
        Assert.True(m.Server.WaitNotifications(5000));
        Assert.Equal((byte)'B', view.ReadByte(4096));
        Assert.False(m.Fs.NotifyInvalidate(0xDEAD_0000_0000, 0, 0)); // unknown file: nothing to tell
    }

    [KernelFact]
    public void Pages_marked_dirty_by_lab_mappings_reach_kernel_mappings()
    {
        using var m = new TestMount();
        File.WriteAllBytes(m.M("c"), new byte[4096]);
        Assert.Equal(0, Syscall.stat(m.M("c"), out var st));
        using var mmf = MemoryMappedFile.CreateFromFile(m.M("c"), FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        using var view = mmf.CreateViewAccessor(0, 4096, MemoryMappedFileAccess.Read);
        Assert.Equal(0, view.ReadByte(7));
        var cache = m.Fs.GetCachedFile(st.st_ino)!;
        Assert.Equal(0, cache.LoadPages(0, 1));
        using (var mem = new FileStream($"/proc/self/fd/{cache.MemfdFd.Number}", FileMode.Open, FileAccess.Write)) { mem.Position = 7; mem.Write("L"u8); }
        long sent = m.Server.NotificationsSent;
        cache.MarkDirty(0, 1); // what the daemon does after a program stored through a shared mapping
        Assert.True(m.Server.WaitNotifications(5000));
        Assert.True(m.Server.NotificationsSent > sent);
        Assert.Equal((byte)'L', view.ReadByte(7));
    }

    [KernelFact]
    public void Entry_notification_drops_a_cached_name()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("gone"), "x");
        Assert.True(File.Exists(m.M("gone"))); // the kernel caches the name for a second
        File.Delete(m.B("gone"));
        Assert.Equal(0, Syscall.stat(m.Backing, out var root));
        Assert.True(m.Fs.NotifyInvalidateEntry(root.st_ino, "gone"));
        Assert.True(m.Server.WaitNotifications(5000));
        Assert.False(File.Exists(m.M("gone")));
    }

    [KernelFact]
    public void Notifications_never_block_and_are_refused_after_unmount()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("q"), "x");
        Assert.Equal(0, Syscall.stat(m.M("q"), out var st));
        var t0 = Environment.TickCount64;
        for (int i = 0; i < 20_000; i++) m.Fs.NotifyInvalidate(st.st_ino, i * 4096L, 4096);
        Assert.True(Environment.TickCount64 - t0 < 2000, "queuing 20,000 notifications took too long");
        Assert.True(m.Server.WaitNotifications(10_000));
        m.Server.Unmount();
        Assert.False(m.Fs.NotifyInvalidate(st.st_ino, 0, 0));
        Assert.False(m.Server.InvalidateInode(1, 0, 0));
    }

    [KernelFact]
    public void Mount_through_fusermount3_serves_and_unmounts()
    {
        if (!File.Exists("/usr/bin/fusermount3")) return;
        Kernel.Require();
        var root = Path.Combine(Path.GetTempPath(), "fusefs-fm-" + Guid.NewGuid().ToString("N")[..8]);
        var backing = Path.Combine(root, "b");
        var mnt = Path.Combine(root, "m");
        Directory.CreateDirectory(backing);
        Directory.CreateDirectory(mnt);
        File.WriteAllText(Path.Combine(backing, "hello"), "via fusermount3");
        var fs = new LabFileSystem(backing, null);
        FuseServer? server = null;
        try
        {
            server = FuseServer.Mount(mnt, fs, new FuseMountOptions { Method = FuseMountMethod.Fusermount });
            Assert.True(server.ViaFusermount);
            server.Start(2);
            Assert.Equal("via fusermount3", File.ReadAllText(Path.Combine(mnt, "hello")));
            var line = File.ReadAllLines("/proc/self/mountinfo").Single(l => l.Split(' ')[4] == mnt);
            Assert.Contains("fuse.lab", line);
            Assert.Contains("allow_other", line);
            File.WriteAllText(Path.Combine(mnt, "w"), "written");
            Assert.Equal("written", File.ReadAllText(Path.Combine(backing, "w")));
            server.Unmount();
            Assert.True(server.Completion.Wait(10_000));
            Assert.DoesNotContain(File.ReadAllLines("/proc/self/mountinfo"), l => l.Split(' ')[4] == mnt);
        }
        finally
        {
            server?.Dispose();
            fs.Dispose();
            FuseServer.ClearStale(mnt);
            try { Directory.Delete(root, true); } catch (IOException) { }
        }
    }
}
