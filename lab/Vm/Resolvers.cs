using Lab.Vm.DragonFly;
using Lab.Vm.FreeBsd;
using Lab.Vm.Uvm;

namespace Lab.Vm;

/// <summary>
/// One seed design's fault handler. Stateless across spaces: all state is in the
/// address space, its entries and the objects.
/// </summary>
public interface IResolver
{
    string Name { get; }

    /// <summary>Resolve a fault at the page-aligned <paramref name="va"/>. <see cref="AddressSpace.Fault"/> has counted it.</summary>
    FaultResult Fault(AddressSpace space, ulong va, FaultAccess access);
}

public static class Resolvers
{
    static readonly string[] names = ["freebsd", "dragonfly", "uvm2000", "uvm2019"];

    public static IReadOnlyList<string> Names => names;

    public static IResolver Create(string name) => name switch
    {
        "freebsd" => new FreeBsdResolver(),
        "dragonfly" => new DragonFlyResolver(),
        "uvm2000" => new Uvm2000Resolver(),
        "uvm2019" => new Uvm2019Resolver(),
        _ => throw new ArgumentException(
            $"unknown resolver '{name}'; valid resolvers: {string.Join(", ", names)}", nameof(name)),
    };
}
