using Lab.Fusefs;
using Mono.Unix.Native;
using Xunit;
using static Lab.Tests.Fusefs.TestFiles;

namespace Lab.Tests.Fusefs;

public class CachedFileTests
{
    [KernelFact]
    public void Unknown_ino_has_no_cache()
    {
        using var m = new TestMount();
        Assert.Null(m.Fs.GetCachedFile(0xDEAD_BEEF_0000));
    }

    [KernelFact]
    public void A_held_cache_outlives_its_deleted_file_and_its_number_finds_the_next_file()
    {
        using var m = new TestMount();
        var old = Pattern(8192, 3);
        File.WriteAllBytes(m.M("f"), old);
        ulong ino = Ino(m.M("f"));
        var cf = m.Fs.GetCachedFile(ino)!;
        Assert.True(cf.Hold()); // as a VM object mapping the file does
        File.Delete(m.M("f"));
        // The kernel forgets the deleted inode: its node leaves the tables (no cache by its number).
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (m.Fs.GetCachedFile(ino) != null && sw.ElapsedMilliseconds < 10_000) Thread.Sleep(10);
        Assert.Null(m.Fs.GetCachedFile(ino));
        // Still readable by its holder, with the deleted file's bytes.
        var buf = new byte[8192];
        Assert.Equal(0, cf.ReadPages(0, 2, buf));
        Assert.Equal(old, buf);
        // The number may go to a new file now or later; whichever file has it gets its own cache.
        var next = Pattern(4096, 4);
        File.WriteAllBytes(m.M("g"), next);
        var cg = m.Fs.GetCachedFile(Ino(m.M("g")))!;
        Assert.NotSame(cf, cg);
        Assert.Equal(0, cg.ReadPages(0, 1, buf.AsSpan(0, 4096)));
        Assert.Equal(next, buf[..4096]);
        // The last hold closes it.
        cf.Release();
        Assert.Equal(Lab.Interop.Errno.EBADF, cf.ReadPages(0, 1, buf.AsSpan(0, 4096)));
        Assert.False(cf.Hold());
    }

    [KernelFact]
    public void Write_through_fuse_is_seen_by_ReadPages()
    {
        using var m = new TestMount();
        var data = Pattern(10000, 1);
        File.WriteAllBytes(m.M("f"), data);
        var cf = m.Fs.GetCachedFile(Ino(m.M("f")));
        Assert.NotNull(cf);
        Assert.Same(cf, m.Fs.GetCachedFile(cf!.Ino));
        Assert.Equal(10000, cf.Size);
        Assert.Equal("f", cf.Name);
        var buf = new byte[3 * 4096];
        Assert.Equal(0, cf.ReadPages(0, 3, buf));
        Assert.Equal(data, buf[..10000]);
        Assert.All(buf[10000..], b => Assert.Equal(0, b)); // past EOF in the last page: zeros
        Assert.True(cf.IsResident(0) && cf.IsResident(2));

        using (var fs = new FileStream(m.M("f"), FileMode.Open, FileAccess.Write))
        {
            fs.Position = 5000;
            fs.Write("XYZ"u8);
            fs.Position = 12000; // grows the file: the cache follows
            fs.Write("END"u8);
        }
        Assert.Equal(12003, cf.Size);
        Assert.Equal(0, cf.ReadPages(1, 2, buf.AsSpan(0, 8192)));
        Assert.Equal("XYZ"u8.ToArray(), buf[(5000 - 4096)..(5003 - 4096)]);
        Assert.Equal("END"u8.ToArray(), buf[(12000 - 4096)..(12003 - 4096)]);
        Assert.Equal(File.ReadAllBytes(m.B("f")), File.ReadAllBytes(m.M("f")));
        // The memfd (what MAP_SHARED mappers get) holds the same bytes.
        var mem = File.ReadAllBytes($"/proc/self/fd/{cf.MemfdFd.Number}");
        Assert.Equal(12003, mem.Length);
        Assert.Equal(File.ReadAllBytes(m.B("f")), mem);
    }

    [KernelFact]
    public void Memfd_write_marked_dirty_is_flushed_to_the_file()
    {
        using var m = new TestMount();
        File.WriteAllBytes(m.M("f"), Pattern(9000, 2));
        var cf = m.Fs.GetCachedFile(Ino(m.M("f")))!;
        Assert.Equal(0, cf.LoadPages(0, 3));
        using (var mem = new FileStream($"/proc/self/fd/{cf.MemfdFd.Number}", FileMode.Open, FileAccess.Write))
        {
            mem.Position = 10;
            mem.Write("dirty bytes"u8);
            mem.Position = 8990;
            mem.Write("tail"u8);
        }
        cf.MarkDirty(0, 3);
        Assert.True(cf.IsDirty(0));
        // Reads through the mount come from the cache even before write-back.
        Assert.Equal("dirty bytes", Sh.Ok("dd if=f bs=1 skip=10 count=11 status=none", m.MountPoint));
        Assert.Equal(0, cf.Flush());
        Assert.False(cf.IsDirty(0));
        var backing = File.ReadAllBytes(m.B("f"));
        Assert.Equal(9000, backing.Length); // the last page only up to EOF
        Assert.Equal("dirty bytes"u8.ToArray(), backing[10..21]);
        Assert.Equal("tail"u8.ToArray(), backing[8990..8994]);
        Assert.Equal(backing, File.ReadAllBytes(m.M("f")));
        Assert.Equal("dirty bytes", Sh.Ok("cat f | dd bs=1 skip=10 count=11 status=none", m.MountPoint));
    }

    [KernelFact]
    public void Pages_past_eof_give_ERANGE_and_truncate_drops_them()
    {
        using var m = new TestMount();
        File.WriteAllBytes(m.M("f"), Pattern(3 * 4096, 3));
        var cf = m.Fs.GetCachedFile(Ino(m.M("f")))!;
        var buf = new byte[4096];
        Assert.Equal(34, cf.ReadPages(3, 1, buf));
        Assert.Equal(34, cf.LoadPages(7, 1));
        Assert.Equal(0, cf.LoadPages(0, 3));
        Sh.Ok("truncate -s 5000 f", m.MountPoint);
        Assert.Equal(5000, cf.Size);
        Assert.True(cf.IsResident(1));
        Assert.False(cf.IsResident(2));
        Assert.Equal(34, cf.ReadPages(2, 1, buf));
        Assert.Equal(0, cf.ReadPages(1, 1, buf));
        Assert.All(buf[(5000 - 4096)..], b => Assert.Equal(0, b));
        Sh.Ok("truncate -s 20000 f", m.MountPoint);
        Assert.Equal(20000, cf.Size);
        Assert.Equal(0, cf.ReadPages(1, 1, buf));
        Assert.All(buf[(5000 - 4096)..], b => Assert.Equal(0, b));
        Assert.Equal(File.ReadAllBytes(m.B("f")), File.ReadAllBytes(m.M("f")));
        Assert.Equal(0, Syscall.fstat(cf.MemfdFd.Number, out var memSt));
        Assert.Equal(20000, memSt.st_size);
        // O_TRUNC through the mount empties the cache too.
        File.WriteAllText(m.M("f"), "new");
        Assert.Equal(3, cf.Size);
        Assert.Equal(0, cf.ReadPages(0, 1, buf));
        Assert.Equal("new"u8.ToArray(), buf[..3]);
    }

    [KernelFact]
    public void FlushAll_and_unmount_write_back_dirty_pages()
    {
        var m = new TestMount();
        try
        {
            File.WriteAllBytes(m.M("f"), new byte[4096]);
            var cf = m.Fs.GetCachedFile(Ino(m.M("f")))!;
            Assert.Equal(0, cf.LoadPages(0, 1));
            using (var mem = new FileStream($"/proc/self/fd/{cf.MemfdFd.Number}", FileMode.Open, FileAccess.Write))
                mem.Write("Z"u8);
            cf.MarkDirty(0, 1);
            m.Server.Unmount();
            Assert.True(m.Server.Completion.Wait(5000));
            Assert.Equal((byte)'Z', File.ReadAllBytes(m.B("f"))[0]);
        }
        finally { m.Dispose(); }
    }
}
