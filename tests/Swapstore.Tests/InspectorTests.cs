using Xunit;

namespace Lab.Swapstore.Tests;

public class InspectorTests
{
    /// <summary>
    /// object 7: 40 pages, object 9: 10 pages, anons 100..104: 1 page each (55 written), then 2 of
    /// object 9's freed and one of object 7's found corrupt: 52 used, 2 free, 1 bad.
    /// </summary>
    static string BuildKnownStore(TempDir dir)
    {
        string file = dir.File();
        long badSlot;
        using (var store = SwapStore.Open(file))
        {
            var writes = new List<SlotWrite>();
            for (int i = 0; i < 40; i++) { long s = store.Allocate(SwapOwner.Object(7, 100 + i)); writes.Add(new(s, Pages.Make(s, 1))); }
            for (int i = 0; i < 10; i++) { long s = store.Allocate(SwapOwner.Object(9, i)); writes.Add(new(s, Pages.Make(s, 1))); }
            for (int i = 0; i < 5; i++) { long s = store.Allocate(SwapOwner.Anon(100 + i)); writes.Add(new(s, Pages.Make(s, 1))); }
            for (int i = 0; i < writes.Count; i += 16) store.WriteCluster(writes.Skip(i).Take(16).ToArray());
            store.FreeMany([41, 42]); // object 9 pindex 0 and 1
            badSlot = 5;              // object 7 pindex 104
        }
        using (var c = Pages.Plain(file))
        using (var cmd = c.CreateCommand())
        {
            cmd.CommandText = $"UPDATE slots SET crc = (crc + 1) % 4294967296 WHERE slot = {badSlot}";
            cmd.ExecuteNonQuery();
        }
        using (var store = SwapStore.Open(file))
            Assert.Equal(SwapReadResult.Corrupt, store.Read(badSlot, new byte[SwapStore.PageBytes]));
        return file;
    }

    [Fact]
    public void Inspect_ReportsExactCounts()
    {
        using var dir = new TempDir();
        string file = BuildKnownStore(dir);
        string text = SwapInspector.Inspect(file, top: 3);
        var lines = text.Split('\n');

        Assert.Contains("  slots: 52 used, 2 free, 1 bad (highest slot 55)", lines);
        Assert.Contains("  owners: 7", lines);
        Assert.Contains($"  page bytes stored: {52 * 4096}", lines);
        Assert.Contains(lines, l => Fields(l) is ["object", "2", "47"]);
        Assert.Contains(lines, l => Fields(l) is ["anon", "5", "5"]);
        // top 3: object 7 (39 slots: 1..40 less the bad one), object 9 (8), then anon 100.
        int top = Array.FindIndex(lines, l => l.StartsWith("top 3 owners", StringComparison.Ordinal));
        Assert.Equal(["object", "7", "39", "100", "139", "1", "40"], Fields(lines[top + 2]));
        Assert.Equal(["object", "9", "8", "2", "9", "43", "50"], Fields(lines[top + 3]));
        Assert.Equal(["anon", "100", "1", "0", "0", "51", "51"], Fields(lines[top + 4]));
        Assert.Equal("  ... 4 more owners", lines[top + 5]);
        Assert.Contains("bad slots: 1", lines);
        Assert.Contains(lines, l => l.TrimStart().StartsWith("5 object 7 pindex 104", StringComparison.Ordinal) && l.EndsWith("checksum mismatch", StringComparison.Ordinal));
    }

    static string[] Fields(string line) => line.Split(' ', StringSplitOptions.RemoveEmptyEntries);

    [Fact]
    public void Inspect_WorksWhileTheStoreIsOpen()
    {
        using var dir = new TempDir();
        using var store = SwapStore.Open(dir.File());
        long s = store.Allocate(SwapOwner.Anon(1));
        store.Write(s, Pages.Make(s, 1));
        Assert.Contains("  slots: 1 used, 0 free, 0 bad (highest slot 1)", SwapInspector.Inspect(dir.File()).Split('\n'));
    }

    [Fact]
    public void Inspect_EmptyStore()
    {
        using var dir = new TempDir();
        SwapStore.Open(dir.File()).Dispose();
        string text = SwapInspector.Inspect(dir.File());
        Assert.Contains("  slots: 0 used, 0 free, 0 bad (highest slot 0)", text.Split('\n'));
        Assert.Contains("  (none)", text.Split('\n'));
    }

    [Fact]
    public void MissingFile_OneLineError()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<SwapStoreException>(() => SwapInspector.Inspect(dir.File("nope.db")));
        AssertOneLine(e.Message);
        Assert.Contains("no such file", e.Message);
        Assert.False(File.Exists(dir.File("nope.db")));
        AssertOneLine(Assert.Throws<SwapStoreException>(() => SwapInspector.Inspect(dir.Path)).Message);
    }

    [Fact]
    public void GarbageFile_OneLineError_AndFileUntouched()
    {
        using var dir = new TempDir();
        string file = dir.File("garbage.db");
        var bytes = new byte[8192];
        new Random(3).NextBytes(bytes);
        File.WriteAllBytes(file, bytes);

        var e = Assert.Throws<SwapStoreException>(() => SwapInspector.Inspect(file));
        AssertOneLine(e.Message);
        Assert.Contains("not a swap store", e.Message);
        var e2 = Assert.Throws<SwapStoreException>(() => SwapStore.Open(file));
        AssertOneLine(e2.Message);
        Assert.Equal(bytes, File.ReadAllBytes(file));

        // A text file is no better.
        File.WriteAllText(file, "hello\nworld\n");
        AssertOneLine(Assert.Throws<SwapStoreException>(() => SwapInspector.Inspect(file)).Message);
    }

    [Fact]
    public void SomeoneElsesSqliteFile_IsRefused()
    {
        using var dir = new TempDir();
        string file = dir.File("other.db");
        using (var c = Pages.Plain(file))
        using (var cmd = c.CreateCommand())
        {
            cmd.CommandText = "CREATE TABLE t(x); INSERT INTO t VALUES (1);";
            cmd.ExecuteNonQuery();
        }
        var e = Assert.Throws<SwapStoreException>(() => SwapInspector.Inspect(file));
        AssertOneLine(e.Message);
        Assert.Contains("not a swap store", e.Message);
        AssertOneLine(Assert.Throws<SwapStoreException>(() => SwapStore.Open(file)).Message);
        using (var c = Pages.Plain(file))
            Assert.Equal(1L, Pages.Scalar(c, "SELECT count(*) FROM sqlite_schema")); // nothing added
    }

    static void AssertOneLine(string message)
    {
        Assert.False(string.IsNullOrWhiteSpace(message));
        Assert.DoesNotContain('\n', message);
        Assert.DoesNotContain('\r', message);
    }
}
