using System.Runtime.InteropServices;
using Lab.Fusefs;
using Mono.Unix.Native;
using Xunit;
using static Lab.Tests.Fusefs.TestFiles;

namespace Lab.Tests.Fusefs;

/// <summary>
/// The mount's one read path (<c>CachedFile.Read</c>): where a read stops and where its bytes come from,
/// for a file nobody maps (no cache) and for one the lab maps. The lab's part is played here as the
/// daemon plays it: <see cref="CachedFile.LoadPages"/> as its fault handler, stores through a MAP_SHARED
/// mapping of the memfd as a program's (the shim maps that memfd), <see cref="CachedFile.MarkDirty"/> as
/// its write-back tracking. Reads are pread(2) through the mount, one READ request each (direct-io).
/// </summary>
public class ReadPathTests
{
    private const int Page = CachedFile.PageSize;

    private static byte[] PRead(string path, long offset, int count)
    {
        using var h = File.OpenHandle(path);
        var buf = new byte[count];
        int n = RandomAccess.Read(h, buf, offset);
        return buf[..n];
    }

    private static void PWrite(string path, long offset, ReadOnlySpan<byte> bytes)
    {
        using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Write);
        RandomAccess.Write(h, bytes, offset);
    }

    /// <summary>A program's MAP_SHARED mapping of the file's memfd: its stores land in the cache's pages.
    /// Only stores inside the file's last page or before it (past it would be SIGBUS).</summary>
    private sealed class Mapping : IDisposable
    {
        private readonly IntPtr _addr;
        private readonly ulong _len;

        public Mapping(CachedFile cf, int pages)
        {
            _len = (ulong)pages * Page;
            _addr = Syscall.mmap(IntPtr.Zero, _len, MmapProts.PROT_READ | MmapProts.PROT_WRITE,
                                 MmapFlags.MAP_SHARED, cf.MemfdFd.Number, 0);
            Assert.NotEqual(Syscall.MAP_FAILED, _addr);
        }

        public void Store(long offset, ReadOnlySpan<byte> bytes) =>
            Marshal.Copy(bytes.ToArray(), 0, _addr + (nint)offset, bytes.Length);

        public void Dispose() => Syscall.munmap(_addr, _len);
    }

    [KernelFact]
    public void A_read_across_eof_stops_at_the_size_mapped_or_not_and_reading_makes_no_cache()
    {
        using var m = new TestMount();
        var data = Pattern(10000, 1);
        File.WriteAllBytes(m.M("f"), data);
        string f = m.M("f");

        // Nobody maps it: the backing file's end ends the read, and no cache (no memory) is made.
        Assert.Equal(data[9000..], PRead(f, 9000, 2 * Page));
        Assert.Equal(data[4000..], PRead(f, 4000, 4 * Page));
        Assert.Empty(PRead(f, 10000, 100));
        Assert.Empty(PRead(f, 50000, 100));
        Assert.Equal(data, File.ReadAllBytes(f));
        Assert.Equal(0, m.Fs.Counts().Caches);

        // Mapped: the partial last page is in the cache, page 1 is not. A program stores in the last
        // page, inside the file and past its end (allowed up to the page's end, never part of the file).
        var cf = m.Fs.GetCachedFile(Ino(f))!;
        Assert.Equal(0, cf.LoadPages(2, 1));
        Assert.False(cf.IsResident(1));
        var expect = (byte[])data.Clone();
        using (var map = new Mapping(cf, 3))
        {
            map.Store(9500, "mapped"u8);
            map.Store(10050, "past eof"u8);
            "mapped"u8.CopyTo(expect.AsSpan(9500));
            // Seen before write-back: not marked dirty yet, so only the cache has it (closing a handle
            // on the mount writes dirty pages back).
            Assert.Equal(expect[9000..], PRead(f, 9000, 2 * Page));
            Assert.Equal(data, File.ReadAllBytes(m.B("f")));
            cf.MarkDirty(2, 1);
            // Across the backing-file page 1 and the cached page 2, stopping at the size.
            Assert.Equal(expect[5000..], PRead(f, 5000, 3 * Page));
            Assert.Equal(expect[(2 * Page)..], PRead(f, 2 * Page, Page));
            Assert.Empty(PRead(f, 10000, 100));
            Assert.Empty(PRead(f, 10050, 8));
            Assert.Equal(expect, File.ReadAllBytes(f));
            Assert.False(cf.IsResident(1)); // reading loaded nothing
        }
        Assert.Equal(0, cf.Flush());
        Assert.Equal(expect, File.ReadAllBytes(m.B("f")));
    }

    [KernelFact]
    public void Truncate_through_the_mount_while_mapped_moves_where_reads_stop()
    {
        using var m = new TestMount();
        var data = Pattern(3 * Page, 2);
        File.WriteAllBytes(m.M("f"), data);
        string f = m.M("f");
        var cf = m.Fs.GetCachedFile(Ino(f))!;
        Assert.Equal(0, cf.LoadPages(0, 3));
        using var map = new Mapping(cf, 3);
        map.Store(4500, "dirty"u8);
        cf.MarkDirty(1, 1);

        Sh.Ok("truncate -s 5000 f", m.MountPoint);
        var expect = data[..5000];
        "dirty"u8.CopyTo(expect.AsSpan(4500));
        Assert.Equal(5000, cf.Size);
        Assert.Equal(expect, File.ReadAllBytes(f));
        Assert.Equal(expect[4000..], PRead(f, 4000, 2 * Page));
        Assert.Empty(PRead(f, 5000, 10));
        Assert.Empty(PRead(f, 2 * Page, 10));

        // A store past the new end in the last page, then the file grows again: those bytes read as
        // zeros, as do the new pages.
        map.Store(6000, "stale"u8);
        Sh.Ok("truncate -s 20000 f", m.MountPoint);
        var grown = new byte[20000];
        expect.CopyTo(grown, 0);
        Assert.Equal(20000, cf.Size);
        Assert.Equal(grown, File.ReadAllBytes(f));
        Assert.Equal(grown[4096..], PRead(f, 4096, 5 * Page));
        Assert.Equal(grown[19000..], PRead(f, 19000, Page));
        Assert.Equal(0, cf.Flush());
        Assert.Equal(grown, File.ReadAllBytes(m.B("f")));
    }

    [KernelFact]
    public void A_write_through_the_mount_while_mapped_is_read_back_from_cached_and_uncached_pages()
    {
        using var m = new TestMount();
        var data = Pattern(10000, 3);
        File.WriteAllBytes(m.M("f"), data);
        string f = m.M("f");
        var cf = m.Fs.GetCachedFile(Ino(f))!;
        Assert.Equal(0, cf.LoadPages(0, 1));
        Assert.Equal(0, cf.LoadPages(2, 1)); // page 1 stays in the backing file only
        var expect = new byte[15005];
        data.CopyTo(expect, 0);
        using (var map = new Mapping(cf, 3))
        {
            map.Store(100, "mapper"u8);
            map.Store(10050, "past eof"u8); // must not show once the file grows over it
            "mapper"u8.CopyTo(expect.AsSpan(100));

            PWrite(f, 2000, "in cached page 0"u8);
            PWrite(f, 6000, "in uncached page 1"u8);
            PWrite(f, 9990, "over the end"u8); // cached partial last page, grows the file
            PWrite(f, 15000, "grown"u8);       // past the end: a hole between
            "in cached page 0"u8.CopyTo(expect.AsSpan(2000));
            "in uncached page 1"u8.CopyTo(expect.AsSpan(6000));
            "over the end"u8.CopyTo(expect.AsSpan(9990));
            "grown"u8.CopyTo(expect.AsSpan(15000));

            Assert.Equal(15005, cf.Size);
            Assert.False(cf.IsResident(1));
            // The store is not marked dirty yet: only the cache has it, and reads see it.
            Assert.Equal(expect[..200], PRead(f, 0, 200));
            Assert.Equal(data.AsSpan(100, 6).ToArray(), File.ReadAllBytes(m.B("f"))[100..106]);
            cf.MarkDirty(0, 1);
            Assert.Equal(expect, File.ReadAllBytes(f));
            Assert.Equal(expect[3000..], PRead(f, 3000, 4 * Page));
            Assert.Equal(expect[10000..], PRead(f, 10000, 2 * Page));
            Assert.Empty(PRead(f, 15005, 10));
        }
        Assert.Equal(0, cf.Flush());
        Assert.Equal(expect, File.ReadAllBytes(m.B("f")));
    }

    [KernelFact]
    public void Sparse_holes_read_as_zeros_mapped_or_not()
    {
        using var m = new TestMount();
        const int Pages = 64;
        var expect = new byte[Pages * Page];
        using (var b = new FileStream(m.B("s"), FileMode.CreateNew, FileAccess.Write))
        {
            b.SetLength(expect.Length);
            b.Write("head"u8);
            b.Position = 20 * Page + 10;
            b.Write("middle"u8);
            b.Position = expect.Length - 4;
            b.Write("tail"u8);
        }
        "head"u8.CopyTo(expect);
        "middle"u8.CopyTo(expect.AsSpan(20 * Page + 10));
        "tail"u8.CopyTo(expect.AsSpan(expect.Length - 4));
        string s = m.M("s");

        Assert.Equal(expect, File.ReadAllBytes(s));
        Assert.Equal(new byte[3 * Page], PRead(s, 30 * Page, 3 * Page));
        Assert.Equal(0, m.Fs.Counts().Caches);

        // Mapped: two hole pages and the middle page cached, a program stores in one hole page.
        var cf = m.Fs.GetCachedFile(Ino(s))!;
        Assert.Equal(0, cf.LoadPages(30, 2));
        Assert.Equal(0, cf.LoadPages(20, 1));
        using (var map = new Mapping(cf, Pages))
        {
            map.Store(31 * Page + 7, "in a hole"u8);
            cf.MarkDirty(31, 1);
        }
        "in a hole"u8.CopyTo(expect.AsSpan(31 * Page + 7));
        Assert.Equal(expect, File.ReadAllBytes(s));
        // Uncached hole, cached hole, cached hole with the store, uncached hole.
        Assert.Equal(expect[(29 * Page)..(33 * Page)], PRead(s, 29 * Page, 4 * Page));
        Assert.Equal(expect[(19 * Page)..(22 * Page)], PRead(s, 19 * Page, 3 * Page));
        Assert.Equal(expect[^100..], PRead(s, expect.Length - 100, 2 * Page));
        Assert.Equal(0, cf.Flush());
        Assert.Equal(expect, File.ReadAllBytes(m.B("s")));
    }

    [KernelFact]
    public void A_cached_file_cut_behind_the_mount_reads_only_to_where_the_backing_file_ends()
    {
        using var m = new TestMount();
        var data = Pattern(3 * Page, 5);
        File.WriteAllBytes(m.M("f"), data);
        string f = m.M("f");
        var cf = m.Fs.GetCachedFile(Ino(f))!;
        Assert.Equal(0, cf.LoadPages(0, 1));
        // Not through the mount: the cache keeps its size, but pages it does not hold come from the
        // backing file, which now ends at 5000.
        using (var b = new FileStream(m.B("f"), FileMode.Open, FileAccess.Write)) b.SetLength(5000);
        Assert.Equal(3 * Page, cf.Size);
        Assert.Equal(data[..5000], PRead(f, 0, 3 * Page));
        Assert.Equal(data[100..Page], PRead(f, 100, Page - 100)); // the cached page is whole
        Assert.Empty(PRead(f, 6000, Page));
    }

    [KernelFact]
    public void A_cached_file_grown_behind_the_mount_reads_only_to_the_size_the_mount_reports()
    {
        using var m = new TestMount();
        var data = Pattern(5000, 6);
        File.WriteAllBytes(m.M("f"), data);
        string f = m.M("f");
        var cf = m.Fs.GetCachedFile(Ino(f))!;
        Assert.Equal(0, cf.LoadPages(0, 1)); // page 1 stays in the backing file only
        using (var b = new FileStream(m.B("f"), FileMode.Append, FileAccess.Write)) b.Write(Pattern(8000, 7));
        // The mount reports the cache's size, and reads stop there, also in the page read from the file.
        Assert.Equal(5000, cf.Size);
        Assert.Equal(data, PRead(f, 0, 4 * Page));
        Assert.Equal(data[4500..], PRead(f, 4500, 2 * Page));
        Assert.Empty(PRead(f, 5000, Page));
        Assert.Empty(PRead(f, 3 * Page, Page));
    }
}
