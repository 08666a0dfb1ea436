using System.Buffers.Binary;
using System.Text;
using Lab.Fusefs;
using Mono.Unix.Native;
using Xunit;

namespace Lab.Tests.Fusefs;

public class SafetyTests
{
    private static byte[] Request(uint opcode, ulong unique, ulong node, byte[] body, int? lenField = null)
    {
        var r = new byte[40 + body.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(r, (uint)(lenField ?? r.Length));
        BinaryPrimitives.WriteUInt32LittleEndian(r.AsSpan(4), opcode);
        BinaryPrimitives.WriteUInt64LittleEndian(r.AsSpan(8), unique);
        BinaryPrimitives.WriteUInt64LittleEndian(r.AsSpan(16), node);
        body.CopyTo(r, 40);
        return r;
    }

    private static (int Errno, ulong Unique, int Len) Reply(byte[] reply)
    {
        Assert.True(reply.Length >= 16, "expected a reply");
        Assert.Equal((uint)reply.Length, BinaryPrimitives.ReadUInt32LittleEndian(reply));
        return (-BinaryPrimitives.ReadInt32LittleEndian(reply.AsSpan(4)), BinaryPrimitives.ReadUInt64LittleEndian(reply.AsSpan(8)), reply.Length);
    }

    private static byte[] Z(string s) => Encoding.UTF8.GetBytes(s + "\0");

    [KernelFact]
    public void Garbage_requests_get_error_replies_and_the_mount_keeps_working()
    {
        using var m = new TestMount();
        File.WriteAllText(m.M("still"), "here");
        var s = m.Server;

        Assert.Empty(s.DispatchForTest(new byte[10]));                               // no unique id: no reply
        var shortOne = new byte[20];
        BinaryPrimitives.WriteUInt64LittleEndian(shortOne.AsSpan(8), 77);
        Assert.Equal((Errno: 22, Unique: 77UL, Len: 16), Reply(s.DispatchForTest(shortOne)));
        Assert.Equal(22, Reply(s.DispatchForTest(Request(1, 1, 1, Z("x"), lenField: 999))).Errno);   // len mismatch
        Assert.Equal(22, Reply(s.DispatchForTest(Request(1, 2, 1, Encoding.UTF8.GetBytes("still")))).Errno); // no NUL
        Assert.Equal(22, Reply(s.DispatchForTest(Request(1, 3, 1, Z("../etc")))).Errno);         // escaping name
        Assert.Equal(22, Reply(s.DispatchForTest(Request(1, 4, 1, Z("..")))).Errno);
        Assert.Equal(36, Reply(s.DispatchForTest(Request(1, 5, 1, Z(new string('a', 300))))).Errno); // ENAMETOOLONG
        Assert.Equal(38, Reply(s.DispatchForTest(Request(9999, 6, 1, []))).Errno);                // unknown: ENOSYS
        Assert.Equal(22, Reply(s.DispatchForTest(Request(15, 7, 1, new byte[8]))).Errno);         // READ too short
        var write = new byte[40 + 4];
        BinaryPrimitives.WriteUInt32LittleEndian(write.AsSpan(16), 4096);                          // size > data
        Assert.Equal(22, Reply(s.DispatchForTest(Request(16, 8, 1, write))).Errno);
        Assert.Equal(22, Reply(s.DispatchForTest(Request(26, 9, 0, new byte[64]))).Errno);        // second INIT
        Assert.Equal(2, Reply(s.DispatchForTest(Request(3, 10, 123456789, new byte[16]))).Errno); // unknown node
        Assert.Equal(9, Reply(s.DispatchForTest(Request(15, 11, 1, new byte[40]))).Errno);        // unknown fh
        Assert.Empty(s.DispatchForTest(Request(2, 12, 1, [])));                                    // FORGET: never answered
        var batch = new byte[8 + 16];
        BinaryPrimitives.WriteUInt32LittleEndian(batch, 1_000_000);                                // count lies
        Assert.Empty(s.DispatchForTest(Request(42, 13, 0, batch)));
        Assert.Empty(s.DispatchForTest(Request(36, 14, 0, new byte[8])));                          // INTERRUPT
        var lookup = s.DispatchForTest(Request(1, 15, 1, Z("still")));
        Assert.Equal((0, 15UL, 16 + 128), Reply(lookup));

        Assert.Equal("here", Sh.Ok("cat still", m.MountPoint));
        Assert.Contains("still", Sh.Ok("ls -l", m.MountPoint));
    }

    // linux/fuse.h: opcode, kernel name, size of the fixed input struct, how many NUL-terminated names follow.
    private static readonly (uint Op, string Name, int Size, int Names)[] Inputs =
    [
        (1, "LOOKUP", 0, 1), (4, "SETATTR", 88, 0), (6, "SYMLINK", 0, 2), (8, "MKNOD", 16, 1), (9, "MKDIR", 8, 1),
        (10, "UNLINK", 0, 1), (11, "RMDIR", 0, 1), (12, "RENAME", 8, 2), (13, "LINK", 8, 1), (14, "OPEN", 8, 0),
        (15, "READ", 40, 0), (16, "WRITE", 40, 0), (18, "RELEASE", 24, 0), (20, "FSYNC", 16, 0),
        (21, "SETXATTR", 8, 1), (22, "GETXATTR", 8, 1), (23, "LISTXATTR", 8, 0), (24, "REMOVEXATTR", 0, 1),
        (25, "FLUSH", 24, 0), (27, "OPENDIR", 8, 0), (28, "READDIR", 40, 0), (29, "RELEASEDIR", 24, 0),
        (30, "FSYNCDIR", 16, 0), (34, "ACCESS", 8, 0), (35, "CREATE", 16, 1), (43, "FALLOCATE", 32, 0),
        (44, "READDIRPLUS", 40, 0), (45, "RENAME2", 16, 2), (46, "LSEEK", 24, 0), (47, "COPY_FILE_RANGE", 56, 0),
        (51, "TMPFILE", 16, 0),
    ];

    [KernelFact]
    public void A_request_too_short_for_its_opcode_is_refused_with_EINVAL_and_logged_by_name()
    {
        using var m = new TestMount();
        var s = m.Server;
        var log = new List<string>();
        s.RefusalLog = line => { lock (log) log.Add(line); };
        ulong unique = 100;
        foreach (var (op, name, size, names) in Inputs)
        {
            // One byte short of the struct (zeros: were it read anyway, the handler would fail otherwise).
            if (size > 0)
            {
                Assert.Equal((22, unique, 16), Reply(s.DispatchForTest(Request(op, unique, 1, new byte[size - 1]))));
                Assert.Contains($"refused {name} (unique {unique})", log[^1]);
                unique++;
            }
            // The struct whole, but the last name without its NUL.
            if (names > 0)
            {
                var body = new byte[size].Concat(names == 2 ? Z("first") : []).Concat(Encoding.UTF8.GetBytes("made")).ToArray();
                Assert.Equal((22, unique, 16), Reply(s.DispatchForTest(Request(op, unique, 1, body))));
                Assert.Contains($"refused {name} (unique {unique})", log[^1]);
                unique++;
            }
        }
        // WRITE and SETXATTR whose size field says more than came with them.
        var write = new byte[40 + 4];
        BinaryPrimitives.WriteUInt32LittleEndian(write.AsSpan(16), 5);
        Assert.Equal((22, unique, 16), Reply(s.DispatchForTest(Request(16, unique, 1, write))));
        Assert.Contains($"refused WRITE (unique {unique++})", log[^1]);
        var setx = new byte[8].Concat(Z("user.x")).Concat("ab"u8.ToArray()).ToArray();
        BinaryPrimitives.WriteUInt32LittleEndian(setx, 3);
        Assert.Equal((22, unique, 16), Reply(s.DispatchForTest(Request(21, unique, 1, setx))));
        Assert.Contains($"refused SETXATTR (unique {unique++})", log[^1]);
        Assert.Equal(Inputs.Sum(i => (i.Size > 0 ? 1 : 0) + (i.Names > 0 ? 1 : 0)) + 2, log.Count);
        Assert.Empty(Directory.GetFileSystemEntries(m.Backing)); // nothing was made by a refused request
        // A request that is whole is not refused: the struct-only SETATTR of the root answers its attributes.
        Assert.Equal((0, 999UL, 16 + 104), Reply(s.DispatchForTest(Request(4, 999, 1, new byte[88]))));
        Assert.Equal(Inputs.Sum(i => (i.Size > 0 ? 1 : 0) + (i.Names > 0 ? 1 : 0)) + 2, log.Count);
    }

    [KernelFact]
    public void Names_that_would_escape_are_rejected()
    {
        using var m = new TestMount();
        var c = new FuseContext(1, 0, 0, 0);
        Assert.Equal(Lab.Interop.Errno.EINVAL, m.Fs.Lookup(in c, 1, "a/b"u8, out _));
        Assert.Equal(Lab.Interop.Errno.EINVAL, m.Fs.Lookup(in c, 1, ".."u8, out _));
        Assert.Equal(Lab.Interop.Errno.EINVAL, m.Fs.Mkdir(in c, 1, "../up"u8, 0x1ED, out _));
        Assert.Equal(Lab.Interop.Errno.ENAMETOOLONG, m.Fs.Lookup(in c, 1, Encoding.UTF8.GetBytes(new string('n', 256)), out _));
        Assert.False(Directory.Exists(Path.Combine(m.Root, "up")));
        // Through the kernel too: a 256-byte name never reaches the backing dir.
        Assert.NotEqual(0, Sh.Run($"touch {new string('n', 256)}", m.MountPoint).Exit);
    }

    [KernelFact]
    public void Bad_mount_points_give_one_clear_message()
    {
        Kernel.Require();
        var fs = new LabFileSystem(Path.GetTempPath(), null);
        try
        {
            var missing = Path.Combine(Path.GetTempPath(), "no-such-" + Guid.NewGuid().ToString("N"));
            Assert.Contains("does not exist", Assert.Throws<FuseMountException>(() => FuseServer.Mount(missing, fs)).Message);
            var file = Path.GetTempFileName();
            try
            {
                Assert.Contains("is not a directory", Assert.Throws<FuseMountException>(() => FuseServer.Mount(file, fs)).Message);
            }
            finally { File.Delete(file); }
            using var m = new TestMount();
            Assert.Contains("already a mount point", Assert.Throws<FuseMountException>(() => FuseServer.Mount(m.MountPoint, fs)).Message);
        }
        finally { fs.Dispose(); }
    }

    private static bool Listed(string mp) =>
        File.ReadAllLines("/proc/self/mountinfo").Any(l => l.Split(' ')[4] == mp);

    [KernelFact]
    public void ClearStale_detaches_a_mount_whose_server_is_gone()
    {
        using var m = new TestMount(start: false);
        try
        {
            Assert.False(FuseServer.ClearStale(m.Backing)); // not a mount at all
            m.Server.AbandonForTest(); // the device closes, the mount stays
            Assert.True(Listed(m.MountPoint));
            Assert.NotEqual(0, Syscall.stat(m.MountPoint, out _));
            Assert.Equal(Mono.Unix.Native.Errno.ENOTCONN, Stdlib.GetLastError());
            Assert.Contains("ClearStale", Assert.Throws<FuseMountException>(() => FuseServer.Mount(m.MountPoint, m.Fs)).Message);
            Assert.True(FuseServer.ClearStale(m.MountPoint));
            Assert.False(Listed(m.MountPoint));
            Assert.Equal(0, Syscall.stat(m.MountPoint, out _));
            Assert.False(FuseServer.ClearStale(m.MountPoint));
        }
        finally { FuseServer.ClearStale(m.MountPoint); }
    }

    [KernelFact]
    public void Unmount_is_idempotent_and_ends_the_threads_even_with_a_file_open()
    {
        using var m = new TestMount();
        Assert.Equal(Math.Min(m.Server.KernelMinor, 39u), m.Server.Minor);
        File.WriteAllText(m.M("held"), "x");
        var held = new FileStream(m.M("held"), FileMode.Open, FileAccess.Read);
        try
        {
            m.Server.Unmount();
            Assert.True(m.Server.Completion.Wait(10_000));
            m.Server.Unmount();
            Assert.False(Listed(m.MountPoint));
            Assert.ThrowsAny<IOException>(() => held.ReadByte());
        }
        finally
        {
            try { held.Dispose(); } catch (IOException) { }
        }
    }

    [KernelFact]
    public void Parallel_writers_and_readers_see_their_own_bytes()
    {
        using var m = new TestMount(threads: 4);
        Parallel.For(0, 8, i =>
        {
            var data = new byte[1024 * 1024 + i * 777];
            new Random(i).NextBytes(data);
            File.WriteAllBytes(m.M($"p{i}"), data);
            for (int k = 0; k < 3; k++) Assert.Equal(data, File.ReadAllBytes(m.M($"p{i}")));
            Assert.Equal(data, File.ReadAllBytes(m.B($"p{i}")));
        });
    }
}

// Allocation is counted process-wide, so this runs alone, after the parallel tests.
[CollectionDefinition("alone", DisableParallelization = true)]
public sealed class AloneCollection { }

[Collection("alone")]
public class SteadyStateTests
{
    [KernelFact]
    public void Reads_and_writes_do_not_allocate_per_request()
    {
        using var m = new TestMount(threads: 1);
        File.WriteAllBytes(m.M("f"), new byte[8192]);
        using var fs = new FileStream(m.M("f"), FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 0);
        var buf = new byte[4096];
        void Round() { for (int i = 0; i < 500; i++) { fs.Position = 0; fs.ReadExactly(buf); fs.Position = 4096; fs.Write(buf); } }
        Round(); // warm up: JIT, handles, pools
        long before = GC.GetTotalAllocatedBytes(true);
        Round();
        long perRequest = (GC.GetTotalAllocatedBytes(true) - before) / 1000;
        Assert.True(perRequest < 64, $"{perRequest} bytes allocated per read/write request");
    }
}
