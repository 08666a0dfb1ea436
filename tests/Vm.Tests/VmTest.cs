global using Lab.Vm;
global using Xunit;

namespace Lab.Tests.Vm;

/// <summary>
/// What the VM unit tests share: a fresh VM per test (xunit makes one instance per test),
/// the addresses they map at, the designs to run a theory for, and the byte checks.
/// </summary>
public abstract class VmTest
{
    protected const ulong P = 4096;
    protected const ulong A = 0x1000_0000;   // where the tests map things
    protected const ulong B = 0x2000_0000;

    protected readonly Lab.Vm.Vm vm = new();

    /// <summary>Every design, for theories.</summary>
    public static TheoryData<string> Designs => new(Resolvers.Names);

    protected SimProcess Proc(string design) => new(vm, Resolvers.Create(design));

    /// <summary>Counter deltas since construction: only the named ones may have moved, each by exactly
    /// that much (the moved ones are written to <paramref name="output"/> when given).</summary>
    protected sealed class Delta(VmCounters c, Xunit.Abstractions.ITestOutputHelper? output = null)
    {
        readonly Dictionary<string, long> before = c.Snapshot().ToDictionary(kv => kv.Key, kv => kv.Value);

        public void Is(params (string Name, long By)[] expected)
        {
            var want = expected.ToDictionary(e => e.Name, e => e.By);
            output?.WriteLine(string.Join(", ", c.Snapshot().Where(kv => kv.Value != before[kv.Key]).Select(kv => $"{kv.Key} +{kv.Value - before[kv.Key]}")));
            foreach (var (name, value) in c.Snapshot())
                Assert.True(want.GetValueOrDefault(name) == value - before[name],
                    $"{name}: expected +{want.GetValueOrDefault(name)}, got +{value - before[name]}");
        }
    }

    /// <summary>A process of <paramref name="design"/> with <paramref name="pages"/> pages of anonymous memory mapped at A.</summary>
    protected SimProcess ProcWithAnon(string design, int pages)
    {
        var p = Proc(design);
        p.MapAnon(A, (ulong)pages * P);
        return p;
    }

    /// <summary>A process of <paramref name="design"/> with a fresh file of <paramref name="pages"/> pages mapped at A.</summary>
    protected SimProcess ProcWithFile(string design, int pages, out MemVnode v) => ProcWithFile(design, pages, out v, out _);

    /// <summary>A process of <paramref name="design"/> with a fresh file of <paramref name="pages"/> pages mapped at A; <paramref name="before"/> is a copy of the file's bytes.</summary>
    protected SimProcess ProcWithFile(string design, int pages, out MemVnode v, out byte[] before)
    {
        v = new MemVnode(pages * (long)P);
        before = (byte[])v.Data.Clone();
        var p = Proc(design);
        p.MapFile(A, (ulong)pages * P, v);
        return p;
    }

    protected static ulong Pg(int i) => A + (ulong)i * P;

    /// <summary>The page at <paramref name="va"/> holds page <paramref name="pindex"/> of the file (sampled every 97 bytes).</summary>
    protected static void AssertPageIsFile(SimProcess p, ulong va, MemVnode v, long pindex)
    {
        for (ulong i = 0; i < P; i += 97)
            Assert.Equal(v.Data[pindex * (long)P + (long)i], p.Read(va + i));
    }

    /// <summary>
    /// Page 0 of a private file mapping at A, read then written: one read fault, one
    /// write-protect fault, one I/O; the copy holds the write; the file and its cache do not.
    /// </summary>
    protected static void ReadThenWriteThePrivatePage(SimProcess p, MemVnode v)
    {
        AssertPageIsFile(p, A, v, 0);
        Assert.False(p.Pmap.Writable(A));         // copy-on-write pending: read-only
        p.Write(A + 1, 0x55);
        Assert.Equal(new[] { FaultAccess.Read, FaultAccess.WriteProtect }, p.Pmap.Faults);
        Assert.Equal(2, p.C.v_vm_faults);
        Assert.Equal(1, p.C.wp_resolved);
        Assert.Equal(1, p.C.v_io_faults);
        Assert.Equal(0x55, p.Read(A + 1));
        Assert.Equal(MemVnode.Pattern(1), v.Data[1]);
        Assert.Equal(MemVnode.Pattern(1), v.CachePage(0)[1]);
    }

    /// <summary>
    /// Four written anonymous pages at A, the middle two unmapped: the entry splits in two
    /// (the second at offset 3), the outer pages keep their bytes, the hole faults SIGSEGV.
    /// </summary>
    protected static void UnmapTheMiddleTwoPagesOfFour(SimProcess p)
    {
        for (int i = 0; i < 4; i++) p.Write(Pg(i), (byte)(i + 1));
        p.Munmap(Pg(1), 2 * P);

        var lines = p.Space.DescribeMaps().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, lines.Length);
        Assert.StartsWith($"{A:x12}-{Pg(1):x12} rw- private-anon", lines[0]);
        Assert.StartsWith($"{Pg(3):x12}-{Pg(4):x12}", lines[1]);
        Assert.Contains("offset 3", lines[1]);
        Assert.Equal(1, p.Read(Pg(0)));
        Assert.Equal(4, p.Read(Pg(3)));
        Assert.Equal("SIGSEGV", Assert.Throws<SimSignalException>(() => p.Read(Pg(1))).Signal);
    }

    /// <summary>No process hit a state the model could not supply bytes for.</summary>
    protected static void AssertNoInternalErrors(params SimProcess[] ps)
    {
        long sum = 0;
        foreach (var p in ps) sum += p.C.internal_errors;
        Assert.Equal(0, sum);
    }

    /// <summary>Exit the processes in this order; then no VM object is left alive.</summary>
    protected void ExitAndAssertNoObjects(params SimProcess[] ps)
    {
        foreach (var p in ps) p.Exit();
        Assert.Equal(0, vm.ObjectsAlive);
    }

    /// <summary>Exit the processes in this order; then no anon is left alive.</summary>
    protected void ExitAndAssertNoAnons(params SimProcess[] ps)
    {
        foreach (var p in ps) p.Exit();
        Assert.Equal(0, vm.AnonsAlive);
    }

    /// <summary>Exit the processes in this order; then no VM object and no anon is left alive.</summary>
    protected void ExitAndAssertFreed(params SimProcess[] ps)
    {
        ExitAndAssertNoObjects(ps);
        Assert.Equal(0, vm.AnonsAlive);
    }

    /// <summary>Exit the processes in this order; then nothing is left: no swap slot, no VM object, no anon.</summary>
    protected void ExitAndAssertNothingLeft(MemSwap swap, params SimProcess[] ps)
    {
        foreach (var p in ps) p.Exit();
        Assert.Equal(0, vm.SwapSlotsInUse);
        Assert.Equal(0, swap.InUse);
        Assert.Equal(0, vm.ObjectsAlive);
        Assert.Equal(0, vm.AnonsAlive);
    }
}
