namespace Lab.Tests.Vm;

/// <summary>The installed-page bitmap against a HashSet, across chunk boundaries.</summary>
public sealed class PageSetTests
{
    [Fact]
    public void RandomOperations_AgreeWithAHashSet()
    {
        var set = new PageSet();
        var oracle = new HashSet<ulong>();
        var rnd = new Random(7);
        for (int step = 0; step < 20000; step++)
        {
            ulong vpn = (ulong)rnd.Next(4000) + (rnd.Next(4) == 0 ? 1UL << 35 : 0);
            switch (rnd.Next(6))
            {
                case 0 or 1 or 2: Assert.Equal(oracle.Add(vpn), set.Add(vpn)); break;
                case 3: Assert.Equal(oracle.Remove(vpn), set.Remove(vpn)); break;
                case 4:
                {
                    ulong end = vpn + (ulong)rnd.Next(1500);
                    set.RemoveRange(vpn, end);
                    oracle.RemoveWhere(p => p >= vpn && p < end);
                    break;
                }
                default:
                {
                    ulong end = vpn + (ulong)rnd.Next(1500);
                    var got = new List<ulong>();
                    set.CollectRange(vpn, end, got);
                    Assert.Equal(oracle.Where(p => p >= vpn && p < end).Order(), got.Order());
                    break;
                }
            }
            Assert.Equal(oracle.Count, set.Count);
            Assert.Equal(oracle.Contains(vpn), set.Contains(vpn));
        }
        set.Clear();
        Assert.Equal(0, set.Count);
        Assert.False(set.Contains(5));
    }
}
