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

    protected static ulong Pg(int i) => A + (ulong)i * P;

    /// <summary>The page at <paramref name="va"/> holds page <paramref name="pindex"/> of the file (sampled every 97 bytes).</summary>
    protected static void AssertPageIsFile(SimProcess p, ulong va, MemVnode v, long pindex)
    {
        for (ulong i = 0; i < P; i += 97)
            Assert.Equal(v.Data[pindex * (long)P + (long)i], p.Read(va + i));
    }
}
