using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Lab.Linux;

namespace Lab.Tests;

/// <summary>
/// The control protocol's two sides agree: the C header (labproto.h, as the C compiler lays it
/// out) and its C# mirror (lab/Linux/Control.cs); a shim of another version is refused; the
/// shim exports only the calls it interposes.
/// </summary>
public sealed class ControlProtocolTests(ITestOutputHelper output)
{
    /// <summary>lab_open_shared_reply -> LabOpenSharedReply; run_id -> RunId.</summary>
    static string Pascal(string c) =>
        string.Concat(c.Split('_', StringSplitOptions.RemoveEmptyEntries).Select(w => char.ToUpperInvariant(w[0]) + w[1..]));

    [Fact]
    public void EveryMessageStructHasTheSameLayoutInCAndCSharp()
    {
        var r = Sh.Run(Repo.Prog("protolayout"), Array.Empty<string>());
        Assert.True(r.ExitCode == 0, r.ToString());
        var asm = typeof(Proto).Assembly;
        var seenStructs = new HashSet<Type>();
        var seenFields = new Dictionary<Type, int>();
        int lines = 0;
        foreach (var line in r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = line.Split(' ');
            long value = long.Parse(parts[^1]);
            lines++;
            if (parts[0] == "version") { Assert.Equal(Proto.Version, (uint)value); continue; }
            if (parts[0] == "max_payload") { Assert.Equal(Proto.MaxPayload, (int)value); continue; }
            if (parts[0] == "const")
            {
                // A flag value the daemon reads (advice, wire flag): the same number on both sides.
                var f = typeof(Proto).GetField(parts[1], BindingFlags.Public | BindingFlags.Static);
                Assert.True(f != null, $"no Proto.{parts[1]}");
                Assert.True(Convert.ToInt64(f!.GetValue(null)) == value, $"Proto.{parts[1]} is {f.GetValue(null)}, C says {value}");
                continue;
            }
            var names = parts[0].Split('.');
            var type = asm.GetType("Lab.Linux." + Pascal(names[0]));
            Assert.True(type != null, $"no C# mirror Lab.Linux.{Pascal(names[0])} of struct {names[0]}");
            Assert.True(type!.IsLayoutSequential, $"{type.Name} is not [StructLayout(LayoutKind.Sequential)]");
            seenStructs.Add(type);
            if (parts[1] == "size")
            {
                Assert.True(value == Marshal.SizeOf(type), $"{names[0]}: C size {value}, C# Marshal.SizeOf {Marshal.SizeOf(type)}");
                // What MemoryMarshal.Read<T> reads: the managed size must be the same.
                int unsafeSize = (int)typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!.MakeGenericMethod(type).Invoke(null, null)!;
                Assert.True(value == unsafeSize, $"{names[0]}: C size {value}, C# Unsafe.SizeOf {unsafeSize}");
            }
            else
            {
                var field = Pascal(names[1]);
                Assert.True(type.GetField(field) != null, $"{type.Name} has no field {field} (C: {parts[0]})");
                long off = (long)Marshal.OffsetOf(type, field);
                Assert.True(value == off, $"{parts[0]}: C offset {value}, C# {type.Name}.{field} at {off}");
                seenFields[type] = seenFields.GetValueOrDefault(type) + 1;
            }
        }
        output.WriteLine($"{lines} layout lines compared, {seenStructs.Count} structs");
        Assert.Equal(15, seenStructs.Count);
        // Every field of a mirror is in the C list (no C# field the C side does not have).
        foreach (var t in seenStructs)
            Assert.True(t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic).Length == seenFields[t],
                $"{t.Name}: {t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic).Length} fields in C#, {seenFields[t]} in C");
        // And every message struct of the C# side is one the C side printed.
        var mirrors = asm.GetTypes().Where(t => t.Namespace == "Lab.Linux" && t.IsValueType && t.Name.StartsWith("Lab")
            && t.StructLayoutAttribute?.Value == LayoutKind.Sequential && t.GetFields().Length > 0 && !t.IsNested).ToList();
        Assert.Empty(mirrors.Except(seenStructs).Select(t => t.Name));
    }

    [Fact]
    public void HeaderReadAndWrittenWithMemoryMarshalIsTheCByteOrder()
    {
        // type 3, len 48, seq 7, status -22, as the shim's struct lab_hdr puts them on the wire.
        byte[] wire = [3, 0, 0, 0, 48, 0, 0, 0, 7, 0, 0, 0, 0xea, 0xff, 0xff, 0xff];
        Assert.True(Proto.TryRead(wire, out LabHdr h));
        Assert.Equal((3u, 48u, 7u, -22), (h.Type, h.Len, h.Seq, h.Status));
        Assert.Equal(wire, Proto.Bytes(in h).ToArray());
        Assert.False(Proto.TryRead(wire.AsSpan(0, 15), out LabHdr _));
        var hello = new byte[72];
        BitConverter.TryWriteBytes(hello.AsSpan(8), 4242);
        "freebsd"u8.CopyTo(hello.AsSpan(16));
        "sqlite3"u8.CopyTo(hello.AsSpan(32));
        BitConverter.TryWriteBytes(hello.AsSpan(64), 99UL);
        Assert.True(Proto.TryRead(hello, out LabHello lh));
        Assert.Equal((4242, "freebsd", "sqlite3", 99UL), (lh.Pid, lh.VmName(), lh.CommName(), lh.RunId));
    }

    [KernelFact]
    public void AShimOfAnotherProtocolVersionStopsWithOneLineAndTheDaemonLogsItOnce()
    {
        var stale = Repo.Prog("liblabpreload-proto0.so");
        Assert.True(File.Exists(stale), $"{stale} is built by `make native`");
        using var m = new LabMount();
        var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--", Repo.Prog("mmapcheck"), "--anon", "3" },
            new Dictionary<string, string> { ["LAB_PRELOAD"] = stale });
        output.WriteLine(r.ToString());
        output.WriteLine(m.DaemonLog);
        Assert.Equal(70, r.ExitCode);
        var errLines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var line = Assert.Single(errLines);
        Assert.Contains("mmapcheck", line);
        Assert.Contains("its shim speaks control protocol version 0 and the lab daemon another", line);
        Assert.DoesNotContain("mmapcheck ok", r.Stdout);
        var logged = m.DaemonLog.Split('\n').Where(l => l.Contains("refused pid")).ToList();
        Assert.Single(logged);
        Assert.Contains($"its shim speaks control protocol version 0, this daemon {Proto.Version}", logged[0]);
        Assert.DoesNotContain("refused a control request", m.DaemonLog);
        // The daemon goes on serving programs with the right shim.
        var ok = m.Run(Repo.Prog("mmapcheck"), "--anon", "3");
        Assert.True(ok.ExitCode == 0, ok.ToString());
    }

    [Fact]
    public void TheShimExportsOnlyTheCallsItInterposes()
    {
        var r = Sh.Run("nm", new[] { "-D", "--defined-only", Repo.Shim });
        Assert.True(r.ExitCode == 0, r.ToString());
        var exported = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).Where(p => p.Length == 3)
            .Select(p => $"{p[1]} {p[2]}").Order(StringComparer.Ordinal).ToList();
        string[] interposed =
        [
            "_Exit", "_exit", "aligned_alloc", "brk", "calloc", "execl", "execle", "execlp", "execv", "execve", "execvp",
            "execvpe", "fexecve", "fork", "free", "ioctl", "madvise", "malloc", "malloc_usable_size", "memalign",
            "mlock", "mlock2", "mlockall", "mmap", "mmap64", "mprotect", "mremap", "msync", "munlock", "munlockall",
            "munmap", "posix_memalign", "pread", "pread64", "pvalloc", "pwrite", "pwrite64", "read", "realloc",
            "reallocarray", "sbrk", "valloc", "wait", "wait3", "wait4", "waitid", "waitpid", "write",
        ];
        Assert.Equal(interposed.Select(n => "T " + n).Order(StringComparer.Ordinal), exported);
    }
}
