using System.Text;
using Xunit;

namespace Lab.Swapstore.Tests;

public class Crc32CTests
{
    [Fact]
    public void KnownVector_AndHardwareMatchesSoftware()
    {
        // The CRC-32C check value from the Castagnoli/iSCSI specification.
        Assert.Equal(0xE3069283u, Crc32C.Compute("123456789"u8));
        var rng = new Random(1);
        foreach (int len in new[] { 0, 1, 7, 8, 9, 63, 4096, 4099 })
        {
            var data = new byte[len];
            rng.NextBytes(data);
            Assert.Equal(~Crc32C.UpdateSoftware(~0u, data), Crc32C.Compute(data));
        }
    }

    [Fact]
    public void SlotChecksum_IsCrc32COfPageThenSlot()
    {
        // The four-lane path for 4 KiB pages must equal the plain definition.
        var rng = new Random(5);
        for (int i = 0; i < 50; i++)
        {
            var page = Pages.Random(rng);
            long slot = rng.NextInt64(1, long.MaxValue);
            var both = new byte[page.Length + 8];
            page.CopyTo(both, 0);
            BitConverter.TryWriteBytes(both.AsSpan(page.Length), slot);
            Assert.Equal(~Crc32C.UpdateSoftware(~0u, both), Crc32C.SlotChecksum(slot, page));
        }
    }

    [Fact]
    public void SlotChecksum_DependsOnTheSlot()
    {
        var page = Pages.Make(1, 1);
        Assert.NotEqual(Crc32C.SlotChecksum(1, page), Crc32C.SlotChecksum(2, page));
    }
}

public class SwapStoreTests
{
    static void WriteAll(SwapStore store, IReadOnlyList<(long slot, byte[] page)> pages, int cluster)
    {
        var writes = new SlotWrite[cluster];
        for (int i = 0; i < pages.Count; i += cluster)
        {
            int n = Math.Min(cluster, pages.Count - i);
            for (int k = 0; k < n; k++) writes[k] = new SlotWrite(pages[i + k].slot, pages[i + k].page);
            store.WriteCluster(writes.AsSpan(0, n));
        }
    }

    [Fact]
    public void RoundTrip_RandomPages_InRandomOrder_AndAfterReopen()
    {
        using var dir = new TempDir();
        var rng = new Random(42);
        var pages = new List<(long slot, byte[] page)>();
        using (var store = SwapStore.Open(dir.File()))
        {
            for (int i = 0; i < 500; i++)
            {
                var owner = i % 3 == 0 ? SwapOwner.Anon(1000 + i) : SwapOwner.Object(i % 5, i);
                pages.Add((store.Allocate(owner), Pages.Random(rng)));
            }
            WriteAll(store, pages, 16);
            Assert.Equal(500, store.Counters.SlotsUsed);
            Assert.Equal(0, store.Counters.SlotsReserved);
            Assert.Equal(500, store.Counters.PagesWritten);

            var buf = new byte[SwapStore.PageBytes];
            foreach (var (slot, page) in pages.OrderBy(_ => rng.Next()))
            {
                Assert.Equal(SwapReadResult.Ok, store.Read(slot, buf));
                Assert.True(page.AsSpan().SequenceEqual(buf), $"slot {slot}");
            }
            Assert.Equal(500, store.Counters.PagesRead);
        }
        using (var store = SwapStore.Open(dir.File()))
        {
            Assert.Equal(500, store.Counters.SlotsUsed);
            var buf = new byte[SwapStore.PageBytes];
            foreach (var (slot, page) in pages)
            {
                Assert.Equal(SwapReadResult.Ok, store.Read(slot, buf));
                Assert.True(page.AsSpan().SequenceEqual(buf), $"slot {slot} after reopen");
            }
        }
        // Dispose checkpointed and truncated the WAL: the data is in the one file.
        Assert.True(!File.Exists(dir.File() + "-wal") || new FileInfo(dir.File() + "-wal").Length == 0);
    }

    [Fact]
    public void Slots_StartAtOne_AndOwnersAreRecorded()
    {
        using var dir = new TempDir();
        using (var store = SwapStore.Open(dir.File()))
        {
            long a = store.Allocate(SwapOwner.Object(7, 3));
            long b = store.Allocate(SwapOwner.Anon(99));
            Assert.Equal(1, a);
            Assert.Equal(2, b);
            store.WriteCluster([new SlotWrite(a, Pages.Make(a, 1)), new SlotWrite(b, Pages.Make(b, 1))]);
        }
        using var c = Pages.Plain(dir.File());
        Assert.Equal("1,7,3|2,99,0", Pages.Scalar(c,
            "SELECT group_concat(owner_kind || ',' || owner_id || ',' || owner_index, '|') FROM (SELECT * FROM slots ORDER BY slot)"));
        Assert.Equal("object", Pages.Scalar(c, "SELECT owner_kind FROM slot_info WHERE slot = 1"));
        Assert.Equal(4096L, Pages.Scalar(c, "SELECT bytes FROM slot_info WHERE slot = 2"));
        Assert.Equal((long)Crc32C.SlotChecksum(2, Pages.Make(2, 1)), Pages.Scalar(c, "SELECT crc FROM slots WHERE slot = 2"));
    }

    [Theory]
    [InlineData(16)]
    [InlineData(32)]
    public void Cluster_IsOneTransaction(int n)
    {
        using var dir = new TempDir();
        using var store = SwapStore.Open(dir.File());
        var writes = new SlotWrite[n];
        for (int i = 0; i < n; i++)
        {
            long s = store.Allocate(SwapOwner.Object(1, i));
            writes[i] = new SlotWrite(s, Pages.Make(s, 1));
        }
        long before = store.Counters.Transactions;
        store.WriteCluster(writes);
        Assert.Equal(before + 1, store.Counters.Transactions);
        Assert.Equal(n, store.Counters.PagesWritten);
        Assert.Equal(n, store.Counters.SlotsUsed);
    }

    [Fact]
    public void Cluster_FailingMidway_LeavesNoneOfIt()
    {
        using var dir = new TempDir();
        long[] slots = new long[32];
        using (var store = SwapStore.Open(dir.File()))
        {
            var writes = new SlotWrite[32];
            for (int i = 0; i < 32; i++)
            {
                slots[i] = store.Allocate(SwapOwner.Object(5, i));
                writes[i] = new SlotWrite(slots[i], Pages.Make(slots[i], 1));
            }
            // An I/O failure after 10 rows are in the transaction.
            store.AfterClusterRow = i => { if (i == 10) throw new IOException("injected"); };
            Assert.Throws<IOException>(() => store.WriteCluster(writes));
            store.AfterClusterRow = null;
            Assert.Equal(0, store.Counters.Transactions);
            Assert.Equal(1, store.Counters.Rollbacks);
            Assert.Equal(0, store.Counters.SlotsUsed);
            var buf = new byte[SwapStore.PageBytes];
            foreach (long s in slots)
            {
                Assert.Equal(SwapSlotState.Reserved, store.GetState(s));
                Assert.Equal(SwapReadResult.Missing, store.Read(s, buf));
            }

            // A malformed page in the middle (short buffer) fails the same way.
            writes[20] = new SlotWrite(slots[20], new byte[100]);
            Assert.Throws<ArgumentException>(() => store.WriteCluster(writes));
            Assert.Equal(2, store.Counters.Rollbacks);
            using (var c = Pages.Plain(dir.File()))
                Assert.Equal(0L, Pages.Scalar(c, "SELECT count(*) FROM slots"));

            // The reservations survive the failure; the retried cluster commits whole.
            writes[20] = new SlotWrite(slots[20], Pages.Make(slots[20], 1));
            store.WriteCluster(writes);
            Assert.Equal(1, store.Counters.Transactions);
            Assert.Equal(32, store.Counters.SlotsUsed);
        }
        using (var c = Pages.Plain(dir.File()))
            Assert.Equal(32L, Pages.Scalar(c, "SELECT count(*) FROM slots"));
    }

    [Fact]
    public void WritingAnUnallocatedOrFreedSlot_Throws()
    {
        using var dir = new TempDir();
        using var store = SwapStore.Open(dir.File());
        Assert.Throws<InvalidOperationException>(() => store.Write(5, Pages.Make(5, 1)));
        long s = store.Allocate(SwapOwner.Anon(1));
        store.Free(s);
        Assert.Throws<InvalidOperationException>(() => store.Write(s, Pages.Make(s, 1)));
        Assert.Throws<InvalidOperationException>(() => store.Free(s));
    }

    [Fact]
    public void Free_ThenReuse_AlsoAfterReopen()
    {
        using var dir = new TempDir();
        var buf = new byte[SwapStore.PageBytes];
        long[] freed;
        using (var store = SwapStore.Open(dir.File()))
        {
            var pages = Enumerable.Range(0, 20).Select(i => store.Allocate(SwapOwner.Object(1, i)))
                .Select(s => (s, Pages.Make(s, 1))).ToList();
            WriteAll(store, pages, 16);
            freed = [pages[3].s, pages[7].s, pages[11].s];
            store.Free(freed[0]);
            store.FreeMany(freed.AsSpan(1));
            foreach (long s in freed)
            {
                Assert.Equal(SwapReadResult.Missing, store.Read(s, buf));
                Assert.Equal(SwapSlotState.Free, store.GetState(s));
            }
            Assert.Equal(17, store.Counters.SlotsUsed);
            Assert.Equal(3, store.Counters.SlotsFreed);
            Assert.Equal(21, store.HighWaterMark);

            // Freed slots are handed out again before new ones.
            var again = new[] { store.Allocate(SwapOwner.Anon(1)), store.Allocate(SwapOwner.Anon(2)), store.Allocate(SwapOwner.Anon(3)) };
            Assert.Equal(freed.OrderBy(x => x), again.OrderBy(x => x));
            Assert.Equal(21, store.Allocate(SwapOwner.Anon(4)));

            // The new owner's bytes, not the old ones, come back.
            store.WriteCluster(again.Select(s => new SlotWrite(s, Pages.Make(s, 2))).ToArray());
            foreach (long s in again)
            {
                Assert.Equal(SwapReadResult.Ok, store.Read(s, buf));
                Assert.True(Pages.Make(s, 2).AsSpan().SequenceEqual(buf));
            }
            store.FreeMany(again);
            store.Free(21); // reserved, never written
        }
        using (var c = Pages.Plain(dir.File()))
        {
            Assert.Equal(17L, Pages.Scalar(c, "SELECT count(*) FROM slots"));
            Assert.Equal(0L, Pages.Scalar(c, $"SELECT count(*) FROM slots WHERE slot IN ({string.Join(',', freed)})"));
        }
        using (var store = SwapStore.Open(dir.File()))
        {
            // The free set is rebuilt from the holes: lowest first.
            Assert.Equal(17, store.Counters.SlotsUsed);
            var got = Enumerable.Range(0, 4).Select(_ => store.Allocate(SwapOwner.Anon(9))).ToArray();
            Assert.Equal(freed.OrderBy(x => x).Append(21), got);
        }
    }

    [Fact]
    public void FreedRows_AreDeletedWithTheNextWrite()
    {
        using var dir = new TempDir();
        using var store = SwapStore.Open(dir.File());
        long a = store.Allocate(SwapOwner.Anon(1)), b = store.Allocate(SwapOwner.Anon(2));
        store.Write(a, Pages.Make(a, 1));
        long tx = store.Counters.Transactions;
        store.Free(a); // no transaction of its own
        Assert.Equal(tx, store.Counters.Transactions);
        using (var c = Pages.Plain(dir.File()))
            Assert.Equal(1L, Pages.Scalar(c, "SELECT count(*) FROM slots"));
        store.Write(b, Pages.Make(b, 1));
        using (var c = Pages.Plain(dir.File()))
            Assert.Equal(b.ToString(), Pages.Scalar(c, "SELECT group_concat(slot) FROM slots"));
    }

    [Fact]
    public void Rewrite_ReplacesBytes_KeepsOwner_AndReassignMovesIt()
    {
        using var dir = new TempDir();
        using (var store = SwapStore.Open(dir.File()))
        {
            long s = store.Allocate(SwapOwner.Object(3, 9));
            store.Write(s, Pages.Make(s, 1));
            store.Write(s, Pages.Make(s, 2));
            var buf = new byte[SwapStore.PageBytes];
            Assert.Equal(SwapReadResult.Ok, store.Read(s, buf));
            Assert.True(Pages.Make(s, 2).AsSpan().SequenceEqual(buf));
            Assert.Equal(1, store.Counters.SlotsUsed);
            store.Reassign(s, SwapOwner.Object(4, 1));
        }
        using var c = Pages.Plain(dir.File());
        Assert.Equal("1,4,1", Pages.Scalar(c, "SELECT owner_kind || ',' || owner_id || ',' || owner_index FROM slots"));
    }

    [Fact]
    public void MissingSlot_ReadsMissing_AndQuotaStopsAllocation()
    {
        using var dir = new TempDir();
        using var store = SwapStore.Open(dir.File(), new SwapStoreOptions { MaxSlots = 3 });
        var buf = new byte[SwapStore.PageBytes];
        Assert.Equal(SwapReadResult.Missing, store.Read(1, buf));
        Assert.Equal(SwapReadResult.Missing, store.Read(12345, buf));
        for (int i = 0; i < 3; i++) Assert.True(store.TryAllocate(SwapOwner.Anon(i), out _));
        Assert.False(store.TryAllocate(SwapOwner.Anon(9), out long none));
        Assert.Equal(0, none);
        Assert.Throws<SwapStoreException>(() => store.Allocate(SwapOwner.Anon(9)));
        store.Free(2);
        Assert.Equal(2, store.Allocate(SwapOwner.Anon(9)));
    }

    [Fact]
    public void CorruptBlob_ReadsCorrupt_ForThatSlotOnly_AndIsNeverReused()
    {
        using var dir = new TempDir();
        const long victim = 7;
        using (var store = SwapStore.Open(dir.File()))
        {
            var pages = Enumerable.Range(0, 20).Select(i => store.Allocate(SwapOwner.Object(2, i)))
                .Select(s => (s, Pages.Make(s, 1))).ToList();
            WriteAll(store, pages, 16);
        }

        // Flip one bit of slot 7's page with plain SQLite, leaving its checksum alone.
        using (var c = Pages.Plain(dir.File()))
        {
            var blob = (byte[])Pages.Scalar(c, $"SELECT data FROM slots WHERE slot = {victim}")!;
            blob[1234] ^= 0x10;
            using var cmd = c.CreateCommand();
            cmd.CommandText = $"UPDATE slots SET data = $d WHERE slot = {victim}";
            cmd.Parameters.AddWithValue("$d", blob);
            Assert.Equal(1, cmd.ExecuteNonQuery());
        }

        var buf = new byte[SwapStore.PageBytes];
        using (var store = SwapStore.Open(dir.File()))
        {
            for (long s = 1; s <= 20; s++)
            {
                Array.Fill(buf, (byte)0xAA);
                var r = store.Read(s, buf);
                if (s == victim)
                {
                    Assert.Equal(SwapReadResult.Corrupt, r);
                    Assert.All(buf, b => Assert.Equal(0xAA, b)); // nothing handed out
                }
                else
                {
                    Assert.Equal(SwapReadResult.Ok, r);
                    Assert.True(Pages.Make(s, 1).AsSpan().SequenceEqual(buf));
                }
            }
            Assert.Equal(SwapSlotState.Bad, store.GetState(victim));
            Assert.Equal(1, store.Counters.BadSlots);
            Assert.Equal(19, store.Counters.SlotsUsed);
            Assert.Equal(SwapReadResult.Corrupt, store.Read(victim, buf)); // still, and without a second mark
            Assert.Equal(2, store.Counters.ReadsCorrupt);
            Assert.Equal(1, store.Counters.BadSlots);

            // Freeing it does not make it allocatable; neither does freeing everything else.
            store.Free(victim);
            Assert.Equal(SwapSlotState.Bad, store.GetState(victim));
            store.FreeMany(Enumerable.Range(1, 20).Where(s => s != victim).Select(s => (long)s).ToArray());
            var handed = Enumerable.Range(0, 40).Select(_ => store.Allocate(SwapOwner.Anon(1))).ToList();
            Assert.DoesNotContain(victim, handed);
            Assert.Throws<InvalidOperationException>(() => store.Write(victim, Pages.Make(victim, 2)));
        }
        using (var c = Pages.Plain(dir.File()))
        {
            Assert.Equal("7,1,2,6,checksum mismatch", Pages.Scalar(c,
                "SELECT slot || ',' || owner_kind || ',' || owner_id || ',' || owner_index || ',' || reason FROM bad_slots"));
            Assert.Equal(0L, Pages.Scalar(c, $"SELECT count(*) FROM slots WHERE slot = {victim}"));
        }
        using (var store = SwapStore.Open(dir.File()))
        {
            Assert.Equal(SwapSlotState.Bad, store.GetState(victim));
            Assert.Equal(1, store.Counters.BadSlots);
            Assert.Equal(SwapReadResult.Corrupt, store.Read(victim, buf));
            var handed = Enumerable.Range(0, 40).Select(_ => store.Allocate(SwapOwner.Anon(1))).ToList();
            Assert.DoesNotContain(victim, handed);
        }
    }

    [Fact]
    public void PageUnderTheWrongSlot_ReadsCorrupt()
    {
        // The checksum covers the slot number, so a page copied (with its checksum) into another
        // slot is caught: a misdirected write, not only flipped bits.
        using var dir = new TempDir();
        using (var store = SwapStore.Open(dir.File()))
        {
            long a = store.Allocate(SwapOwner.Anon(1)), b = store.Allocate(SwapOwner.Anon(2));
            store.WriteCluster([new SlotWrite(a, Pages.Make(a, 1)), new SlotWrite(b, Pages.Make(b, 1))]);
        }
        using (var c = Pages.Plain(dir.File()))
        using (var cmd = c.CreateCommand())
        {
            cmd.CommandText = "UPDATE slots SET (data, crc) = (SELECT data, crc FROM slots WHERE slot = 1) WHERE slot = 2";
            cmd.ExecuteNonQuery();
        }
        using (var store = SwapStore.Open(dir.File()))
        {
            var buf = new byte[SwapStore.PageBytes];
            Assert.Equal(SwapReadResult.Ok, store.Read(1, buf));
            Assert.Equal(SwapReadResult.Corrupt, store.Read(2, buf));
        }
    }

    [Fact]
    public void CorruptByteInTheFileItself_ReadsCorrupt()
    {
        // Below SQLite: flip a byte of the page where it lies in the database file.
        using var dir = new TempDir();
        var marked = Pages.Make(3, 1);
        byte[] marker = Encoding.ASCII.GetBytes("<<swap-test-marker-3>>");
        marker.CopyTo(marked, 2000);
        using (var store = SwapStore.Open(dir.File()))
        {
            var pages = Enumerable.Range(0, 8).Select(i => store.Allocate(SwapOwner.Anon(i))).ToArray();
            store.WriteCluster(pages.Select(s => new SlotWrite(s, s == 3 ? marked : Pages.Make(s, 1))).ToArray());
        } // Dispose checkpoints: the pages are now in the main file, the WAL empty.
        byte[] file = File.ReadAllBytes(dir.File());
        // A B-tree split can leave a stale copy of the row in a free page: damage every copy.
        var hits = new List<int>();
        for (int at = file.AsSpan().IndexOf(marker); at >= 0; )
        {
            hits.Add(at);
            int next = file.AsSpan(at + 1).IndexOf(marker);
            at = next < 0 ? -1 : at + 1 + next;
        }
        Assert.NotEmpty(hits);
        using (var fs = new FileStream(dir.File(), FileMode.Open, FileAccess.ReadWrite))
            foreach (int at in hits)
            {
                fs.Position = at + 3;
                fs.WriteByte((byte)(marker[3] ^ 0x01));
            }
        using var s2 = SwapStore.Open(dir.File());
        var buf = new byte[SwapStore.PageBytes];
        for (long s = 1; s <= 8; s++)
            Assert.Equal(s == 3 ? SwapReadResult.Corrupt : SwapReadResult.Ok, s2.Read(s, buf));
        Assert.Equal(1, s2.Counters.BadSlots);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Wal_StaysBounded_WhileReadsKeepTheirSnapshot(bool background)
    {
        // The reader's long-lived snapshot must not stop checkpoints from copying everything and
        // the WAL from restarting: the WAL file stays near the checkpoint interval.
        using var dir = new TempDir();
        var o = new SwapStoreOptions { PageSize = 4096, WalAutoCheckpoint = 200, MaxWalPages = 800, BackgroundCheckpoint = background };
        using var store = SwapStore.Open(dir.File(), o);
        var buf = new byte[SwapStore.PageBytes];
        var page = Pages.Make(1, 1);
        var writes = new SlotWrite[16];
        long maxWal = 0;
        for (int c = 0; c < 400; c++)
        {
            for (int i = 0; i < 16; i++) writes[i] = new SlotWrite(store.Allocate(SwapOwner.Object(1, c * 16 + i)), page);
            store.WriteCluster(writes);
            store.Read(writes[c % 16].Slot, buf); // a read between every pair of writes
            if (c % 8 == 0) store.FreeMany(writes.AsSpan(0, 8).ToArray().Select(w => w.Slot).ToArray());
            maxWal = Math.Max(maxWal, new FileInfo(dir.File() + "-wal").Length);
        }
        Assert.True(store.Counters.Checkpoints > 5, $"{store.Counters.Checkpoints} checkpoints");
        // 800 pages of backpressure bound, ~1.3 frames of 4 KiB per page, plus slack.
        Assert.True(maxWal < 8L << 20, $"WAL reached {maxWal} bytes");
    }

    [Fact]
    public void ConcurrentReadsDuringClusterWrites_AllVerify()
    {
        using var dir = new TempDir();
        using var store = SwapStore.Open(dir.File());
        var committed = new System.Collections.Concurrent.ConcurrentQueue<long>();
        var first = Enumerable.Range(0, 64).Select(i => store.Allocate(SwapOwner.Object(1, i))).ToArray();
        store.WriteCluster(first.Select(s => new SlotWrite(s, Pages.Make(s, 1))).ToArray());
        foreach (long s in first) committed.Enqueue(s);
        using var stop = new CancellationTokenSource();
        int failures = 0, reads = 0;
        // Dedicated threads: the thread pool may be busy with other tests.
        var readers = Enumerable.Range(0, 3).Select(t => new Thread(() =>
        {
            var rng = new Random(t);
            var buf = new byte[SwapStore.PageBytes];
            var expect = new byte[SwapStore.PageBytes];
            while (!stop.IsCancellationRequested)
            {
                var arr = committed.ToArray();
                long s = arr[rng.Next(arr.Length)];
                Pages.Fill(expect, s, 1);
                if (store.Read(s, buf) != SwapReadResult.Ok || !buf.AsSpan().SequenceEqual(expect)) Interlocked.Increment(ref failures);
                Interlocked.Increment(ref reads);
            }
        })).ToArray();
        foreach (var th in readers) th.Start();
        // Keep writing until the readers have had a fair go at it too.
        for (int c = 0; c < 100 || (Volatile.Read(ref reads) < 2000 && c < 20000); c++)
        {
            var slots = Enumerable.Range(0, 16).Select(i => store.Allocate(SwapOwner.Object(2, c * 16 + i))).ToArray();
            store.WriteCluster(slots.Select(s => new SlotWrite(s, Pages.Make(s, 1))).ToArray());
            foreach (long s in slots) committed.Enqueue(s);
        }
        stop.Cancel();
        foreach (var th in readers) th.Join();
        Assert.Equal(0, failures);
        Assert.True(reads >= 2000, $"{reads} reads");
        Assert.Equal(committed.Count, store.Counters.SlotsUsed);
    }
}
